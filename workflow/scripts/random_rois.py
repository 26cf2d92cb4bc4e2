"""Rule random_rois: randROI, the veROI table's voxels and sizes with labels assigned at random."""

from afo.jobs import run_job


def main(smk):
    from afo.io.tables import read_roi_table
    from afo.rois.tables import random_roi_table, write_table

    return write_table(random_roi_table(read_roi_table(smk.input[0]), smk.params.seed), smk.output[0])


run_job(snakemake, lambda: main(snakemake))
