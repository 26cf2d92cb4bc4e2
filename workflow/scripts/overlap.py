"""Rule overlap: images shared between datasets (results/data/overlap.csv) and its summary for the report."""

from afo.jobs import named_by_stem, run_job


def main(smk):
    from afo.data.overlap import find_overlap, overlap_summary
    from afo.io.tables import write_csv
    from afo.report import write_html_table

    stores = named_by_stem(smk.input.stores)
    table = find_overlap(stores, smk.params.max_distance, smk.params.min_correlation)
    write_csv(table, smk.output.csv)
    summary = overlap_summary(table, stores, smk.params.trained_on, smk.params.exclude)
    note = (
        "Images shared between datasets, found by source (COCO id, THINGS file name) or by perceptual hash "
        "(results/data/overlap.csv). n_test_left_out: test images left out of evaluation and probing because a "
        "training dataset trained on them" + ("" if smk.params.exclude else " (overlap.exclude is off: none)") + "."
    )
    write_html_table(summary, smk.output.html, "Images shared between datasets", note)
    return {
        "pairs": len(table),
        "by_method": table["method"].value_counts().to_dict(),
        "test_left_out": dict(zip(summary["dataset"], summary["n_test_left_out"].astype(int))),
    }


run_job(snakemake, lambda: main(snakemake))
