"""Rule synthetic_checks: veROIs vs simulated areas, decoding vs chance, RetinaMap vs true RF centres."""

from afo.jobs import run_job


def main(smk):
    from afo.evaluation.synthetic import synthetic_checks, write_synthetic_checks

    checks = synthetic_checks(
        smk.params.ground_truth,
        smk.input.veroi,
        smk.input.voxels,
        smk.input.retrieval,
        "afo",
        smk.params.permutations,
        smk.params.seed,
    )
    return write_synthetic_checks(checks, smk.output.json, smk.output.html)


run_job(snakemake, lambda: main(snakemake))
