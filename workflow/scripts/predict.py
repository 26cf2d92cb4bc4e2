"""Rules predict and dark_knowledge: a model's predictions per image of some splits (its own ROI for ROI models)."""

from afo.jobs import named_by_stem, optional_input, run_job


def main(smk):
    from afo.runtime import resolve_device
    from afo.training.predict import predict_file

    compute = smk.config["compute"]
    return predict_file(
        smk.input.model,
        named_by_stem(smk.input.stores),
        named_by_stem(smk.input.features),
        smk.params.splits,
        smk.output[0],
        rois=optional_input(smk, "rois"),
        roi=smk.params.roi,
        dtype=smk.params.dtype,
        device=resolve_device(compute["device"]),
        backbone=dict(smk.params.backbone) or None,
        num_workers=compute["num_workers"],
    )


run_job(snakemake, lambda: main(snakemake))
