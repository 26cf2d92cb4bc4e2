"""Rule features: cache the frozen backbone's tapped layers for every image of one prepared store."""

from afo.jobs import run_job


def main(smk):
    from afo.features import BackboneSpec, extract_features
    from afo.runtime import resolve_device

    compute = smk.config["compute"]
    spec = BackboneSpec.from_config(smk.params.backbone)
    return extract_features(
        smk.input[0],
        smk.output[0],
        spec,
        batch_size=compute["feature_batch_size"],
        device=resolve_device(compute["device"]),
    )


run_job(snakemake, lambda: main(snakemake))
