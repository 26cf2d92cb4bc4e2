"""Rule predict_ood: a model's predictions of a test-only holdout store, made with the heads of the training
dataset it names (the store and its features are given under that dataset's name)."""

from afo.jobs import optional_input, run_job


def main(smk):
    from afo.runtime import resolve_device
    from afo.training.predict import predict_file

    compute = smk.config["compute"]
    heads_of = smk.params.heads_of
    return predict_file(
        smk.input.model,
        {heads_of: smk.input.store},
        {heads_of: smk.input.features[0]} if smk.input.features else {},
        ["test"],
        smk.output[0],
        rois=optional_input(smk, "rois"),
        roi=smk.params.roi,
        dtype="float32",
        device=resolve_device(compute["device"]),
        backbone=dict(smk.params.backbone) or None,
        num_workers=compute["num_workers"],
    )


run_job(snakemake, lambda: main(snakemake))
