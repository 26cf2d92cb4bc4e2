"""Rule dendrogram: the veROI dendrogram with its cut (paper Figure 6)."""

from afo.jobs import run_job


def main(smk):
    from afo.figures.probing import dendrogram

    return {"figure": str(dendrogram(smk.input[0], smk.output[0]))}


run_job(snakemake, lambda: main(snakemake))
