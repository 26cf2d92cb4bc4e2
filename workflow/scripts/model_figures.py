"""Rule model_figures: RetinaMap, LayerSelector and brain-map figures of one model, and NIfTI maps."""

from afo.jobs import named_by_stem, run_job


def main(smk):
    from afo.figures.probing import model_figures

    out = smk.output
    return model_figures(
        smk.input.voxels,
        smk.wildcards.name,
        named_by_stem(smk.input.stores),
        out.retina,
        out.layers,
        out.brain,
        out.nifti,
        smk.params.ground_truth,
        smk.params.visual_angles,
    )


run_job(snakemake, lambda: main(snakemake))
