"""Rule decode: retrieval accuracy of each subject's test images per ROI, and the retrieval figures."""
from afo.jobs import named_by_stem, run_job


def main(smk):
    from afo.decoding.retrieval import decode_model

    return decode_model(smk.input.predictions, named_by_stem(smk.input.stores), smk.input.rois[0], smk.params.roi_set,
                        smk.output.table, smk.output.figures, smk.params.examples, smk.params.top_k)


run_job(snakemake, lambda: main(snakemake))
