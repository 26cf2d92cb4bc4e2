"""Rule veroi: veROIs from the averaged head weights of the stage-0 models (k-means, then Ward)."""

from afo.jobs import run_job


def main(smk):
    from afo.rois.tables import write_veroi

    v = smk.params.veroi
    return write_veroi(
        smk.input.models, v["n_kmeans"], v["n_rois"], v["threshold"], v["seed"], smk.output.table, smk.output.clustering
    )


run_job(snakemake, lambda: main(snakemake))
