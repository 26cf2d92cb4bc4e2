"""Rules summary_html and comparison_html: a CSV table as an HTML report item."""

from afo.jobs import run_job


def main(smk):
    from afo.report import render_csv

    return {"html": str(render_csv(smk.input[0], smk.output[0], smk.params.title, best_of=smk.params.best_of))}


run_job(snakemake, lambda: main(snakemake))
