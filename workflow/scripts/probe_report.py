"""Rule probe_report: probe.csv over every extractor and dataset, its summary and the violin figure."""

from afo.jobs import run_job


def main(smk):
    from afo.figures.plots import plot_violins
    from afo.probing.benchmark import violin_table, write_probe_report

    table = write_probe_report(list(smk.input), smk.output.table, smk.output.summary)
    plot_violins(violin_table(table), smk.output.figure, "Linear probing: test r per voxel (PCA + per-voxel ridge)")
    return {"rows": len(table), "extractors": sorted(table["extractor"].unique())}


run_job(snakemake, lambda: main(snakemake))
