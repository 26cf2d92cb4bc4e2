"""Every training rule (stage 0, ablations, stages 1-3, noDK): train one model, keep its top-k, write the soup."""

from pathlib import Path

from afo.jobs import named_by_stem, optional_input, run_job


def main(smk):
    from afo.training.fit import TrainSpec, fit

    compute = smk.config["compute"]
    spec = TrainSpec(
        stores=named_by_stem(smk.input.stores),
        features=named_by_stem(smk.input.features),
        # How the job uses the machine (compute:) joins the settings here, never in the rule's params.
        model={**smk.params.model, "readout_chunk": compute["readout_chunk"]},
        train={**smk.params.train, "num_workers": compute["num_workers"]},
        rois=optional_input(smk, "rois"),
        roi=smk.params.roi,
        own_roi=smk.params.own_roi,
        dark_knowledge=list(smk.input.get("dk", [])),
        target_mode=smk.params.target_mode,
        neck_init=optional_input(smk, "neck"),
        backbone=dict(smk.params.backbone) or None,  # backbone.cache none: features from the stores' images
    )
    # compute.train_devices: DDP on N devices; changes no result, so it is no param and not part of the spec.
    return fit(spec, Path(smk.output.model).parent, devices=compute["train_devices"])


run_job(snakemake, lambda: main(snakemake))
