"""Rule ood: a model's scores on the test-only holdouts (with the heads of the dataset each names) beside its
in-distribution test scores: ood_voxels.csv and ood.csv."""

from afo.jobs import named_by_stem, run_job


def main(smk):
    import pandas as pd

    from afo.config import ood_prediction_path
    from afo.evaluation.ood import holdout_voxels, ood_table
    from afo.io.tables import write_csv

    stores = named_by_stem(smk.input.stores)
    frames = [
        holdout_voxels(
            [(m, ood_prediction_path(m, holdout)) for m in smk.input.models],
            holdout,
            stores[holdout],
            heads_of,
            rois=smk.input.rois[0],
            dataset_roi_set=smk.params.roi_set,
            visual_angle=smk.params.visual_angles[holdout],
        )
        for holdout, heads_of in sorted(smk.params.pairs.items())
    ]
    out_voxels = pd.concat(frames, ignore_index=True)
    in_voxels = pd.read_csv(smk.input.voxels, dtype={"subject": str, "roi": str})
    table = ood_table(in_voxels, out_voxels, smk.params.pairs)
    write_csv(out_voxels, smk.output.voxels)
    write_csv(table, smk.output.table)
    everything = table[table["roi"] == "all"]
    return {
        f"{r.dataset_out}/{r.subject}": {"mean_r_in": float(r.mean_r_in), "mean_r_out": float(r.mean_r_out)}
        for r in everything.itertuples()
    }


run_job(snakemake, lambda: main(snakemake))
