"""Rule headline: the report's front page, the run's headline numbers at a glance."""

from afo.jobs import optional_input, run_job


def main(smk):
    from afo.evaluation.headline import headline_table, write_headline

    table = headline_table(
        smk.input.comparison,
        *(optional_input(smk, k) for k in ("retrieval", "probe", "checks")),
        training=smk.input.training,
        summary=optional_input(smk, "summary"),
    )
    write_headline(table, smk.output[0])
    return {"rows": len(table)}


run_job(snakemake, lambda: main(snakemake))
