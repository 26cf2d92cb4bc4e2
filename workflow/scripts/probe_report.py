"""Rule probe_report: probe.csv over every extractor and dataset, its summary and the violin figure."""
from afo.jobs import run_job


def main(smk):
    from afo.probing.benchmark import write_probe_report

    return write_probe_report(list(smk.input), smk.output.table, smk.output.summary, smk.output.figure)


run_job(snakemake, lambda: main(snakemake))
