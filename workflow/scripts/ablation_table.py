"""Rule ablation_table: the paper's Tables 2-3 layout over every evaluated model, and comparison.csv (its view)."""

from afo.jobs import run_job


def main(smk):
    from afo.evaluation.tables import write_ablation_outputs

    voxels = dict(zip(smk.params.names, smk.input.voxels))
    return write_ablation_outputs(
        voxels, smk.input.veroi, smk.params.area_groups, smk.output.table, smk.output.html, smk.output.comparison
    )


run_job(snakemake, lambda: main(snakemake))
