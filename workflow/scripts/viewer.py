"""Rule viewer: one interactive HTML page per dataset and subject of a model (afo.figures.viewer)."""

from afo.jobs import named_by_stem, run_job


def main(smk):
    from afo.figures.viewer import viewer_pages

    return viewer_pages(
        smk.input.voxels, smk.wildcards.name, named_by_stem(smk.input.stores), smk.output[0], smk.params.surfaces
    )


run_job(snakemake, lambda: main(snakemake))
