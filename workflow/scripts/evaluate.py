"""Rule evaluate: voxels.csv and summary.csv of one model (or of per-ROI models assembled)."""

from pathlib import Path

from afo.jobs import named_by_stem, run_job


def main(smk):
    from afo.data.overlap import left_out_by_dataset
    from afo.evaluation.scores import challenge_labels, left_out_counts, voxel_table, write_tables

    stores = named_by_stem(smk.input.stores)
    leave_out = left_out_by_dataset(smk.input.overlap, stores, smk.params.trained_on)
    table = voxel_table(
        list(zip(smk.input.models, smk.input.predictions)),
        stores,
        rois=smk.input.rois[0],
        dataset_roi_set=smk.params.roi_set,
        leave_out=leave_out,
        visual_angles=smk.params.visual_angles,
    )
    counts = left_out_counts(stores, leave_out)
    write_tables(table, Path(smk.output.voxels).parent, counts, challenge_labels(stores))
    return {
        "voxels": len(table),
        "mean_r_test": float(table["r_test"].mean()),
        "test_images_left_out": {f"{r.dataset}/{r.subject}": int(r.n_test_left_out) for r in counts.itertuples()},
    }


run_job(snakemake, lambda: main(snakemake))
