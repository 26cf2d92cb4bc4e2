"""Rule headline: the report's front page, the run's headline numbers at a glance."""
from afo.jobs import run_job


def optional(files):
    """An optional input is an empty list when the config turns its section off."""
    return files[0] if files else None


def main(smk):
    from afo.evaluation.headline import headline_table, write_headline

    i = smk.input
    table = headline_table(i.comparison, optional(i.retrieval), optional(i.probe), optional(i.checks))
    write_headline(table, smk.output[0])
    return {"rows": len(table)}


run_job(snakemake, lambda: main(snakemake))
