"""Rule roi_scores: per-ROI encoding and retrieval scores per subject (paper Figure 8)."""

from pathlib import Path

from afo.jobs import run_job


def main(smk):
    from afo.figures.probing import roi_score_figures

    Path(smk.output[0]).mkdir(parents=True, exist_ok=True)
    figures = roi_score_figures(
        smk.input.voxels, smk.input.retrieval, smk.params.roi_set, smk.output[0], smk.wildcards.name
    )
    return {"figures": len(figures)}


run_job(snakemake, lambda: main(snakemake))
