"""Rule training_summary: how every training job ended (results/models/training.csv)."""

from afo.jobs import run_job


def main(smk):
    from afo.evaluation.training import stopped_at_cap, training_table
    from afo.io.tables import write_csv

    table = training_table(list(smk.input))
    write_csv(table, smk.output[0])
    return {"jobs": len(table), "stopped_at_max_epochs": stopped_at_cap(table)["model"].tolist()}


run_job(snakemake, lambda: main(snakemake))
