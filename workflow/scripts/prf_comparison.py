"""Rule prf_comparison: a model's RetinaMap against NSD's measured pRF maps (per voxel, per visual ROI, figures)."""

from afo.jobs import named_by_stem, run_job


def main(smk):
    import pandas as pd

    from afo.data.nsd_prf import prf_table
    from afo.evaluation.prf import comparison_table, roi_summary
    from afo.figures.prf import prf_figures
    from afo.io.tables import read_voxels, write_csv

    voxels = read_voxels(smk.input.voxels)
    stores = named_by_stem(smk.input.stores)
    tables = [comparison_table(voxels, prf_table(root, stores[name]), name) for name, root in smk.params.roots.items()]
    table = pd.concat(tables, ignore_index=True)
    summary = roi_summary(table, smk.params.min_r2)
    write_csv(table, smk.output.voxels)
    write_csv(summary, smk.output.rois)
    figures = prf_figures(table, smk.params.min_r2, smk.output.figures, smk.wildcards.name)
    return {"voxels": len(table), "figures": len(figures), "rois": summary.to_dict("records")}


run_job(snakemake, lambda: main(snakemake))
