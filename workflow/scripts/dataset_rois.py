"""Rule dataset_rois: the datasets' own ROI labels as an ROI table."""

from afo.jobs import named_by_stem, run_job


def main(smk):
    from afo.rois.tables import dataset_roi_table, write_table

    return write_table(dataset_roi_table(named_by_stem(smk.input.stores), smk.params.roi_set), smk.output[0])


run_job(snakemake, lambda: main(snakemake))
