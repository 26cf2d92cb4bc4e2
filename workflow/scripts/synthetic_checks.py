"""Rule synthetic_checks: veROIs vs simulated areas, decoding vs chance, RetinaMap vs true RF centres."""
from afo.jobs import run_job


def main(smk):
    from afo.evaluation.synthetic import write_synthetic_checks

    return write_synthetic_checks(smk.params.ground_truth, smk.input.veroi, smk.input.voxels, smk.input.retrieval,
                                  smk.output.json, smk.output.html, "afo", smk.params.permutations, smk.params.seed)


run_job(snakemake, lambda: main(snakemake))
