"""Rule finetune: fit the holdout datasets' subjects on a trained model's frozen core (afo.training.finetune)."""

from afo.jobs import named_by_stem, run_job


def main(smk):
    from afo.training.finetune import FinetuneSpec, finetune

    spec = FinetuneSpec(
        model=smk.input.model,
        stores=named_by_stem(smk.input.stores),
        features=named_by_stem(smk.input.features),
        # How the job uses the machine (compute:) joins the settings here, never in the rule's params.
        train={**smk.params.train, "num_workers": smk.config["compute"]["num_workers"]},
    )
    return finetune(spec, smk.output.model)


run_job(snakemake, lambda: main(snakemake))
