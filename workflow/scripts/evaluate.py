"""Rule evaluate: voxels.csv and summary.csv of one model (or of per-ROI models assembled)."""
from pathlib import Path

from afo.jobs import named_by_stem, run_job


def main(smk):
    from afo.evaluation.scores import voxel_table, write_tables

    table = voxel_table(list(zip(smk.input.models, smk.input.predictions)), named_by_stem(smk.input.stores),
                        rois=smk.input.rois[0], dataset_roi_set=smk.params.roi_set)
    write_tables(table, Path(smk.output.voxels).parent)
    return {"voxels": len(table), "mean_r_test": float(table["r_test"].mean())}


run_job(snakemake, lambda: main(snakemake))
