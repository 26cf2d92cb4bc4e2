"""Rule decode: retrieval accuracy of each subject's test images per ROI, and the retrieval figures."""

from pathlib import Path

from afo.jobs import named_by_stem, run_job


def main(smk):
    from afo.decoding.retrieval import decode_model
    from afo.figures.retrieval import retrieval_figures

    stores, rois = named_by_stem(smk.input.stores), smk.input.rois[0]
    predictions, roi_sets = decode_model(smk.input.predictions, stores, rois, smk.params.roi_set, smk.output.table)
    figures = retrieval_figures(
        predictions, stores, roi_sets, Path(rois).stem, smk.output.figures, smk.params.examples, smk.params.top_k
    )
    return {"subjects": len(predictions), "figures": len(figures)}


run_job(snakemake, lambda: main(snakemake))
