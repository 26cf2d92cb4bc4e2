"""The report's front page: the headline numbers of a run at a glance, each pointing to its section.

First, whether every model finished training (the training jobs that stopped at their epoch cap, listed by name);
then afo against naivemix per dataset (the paper's claim), the Algonauts 2023 challenge score of fsaverage datasets
with a noise ceiling beside the published leaderboard, decoding top-1 against chance, linear probing on holdout
datasets (Figure 1's claim), and, on a synthetic brain, how well the RetinaMap recovered the true receptive fields.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from afo.evaluation.training import stopped_at_cap
from afo.io.tables import read_table

COLUMNS = ["section", "what", "value", "reference", "see"]
# The Algonauts 2023 leaderboard's top three (algonautsproject.com, 2023), computed by the challenge on the release's
# hidden test responses: what afo's challenge score is read beside, never computed here.
PUBLISHED_CHALLENGE = (70.85, 63.52, 61.57)
PUBLISHED_NOTE = (
    "Algonauts 2023 challenge score as published (algonautsproject.com 2023 leaderboard, top 3: 70.85, 63.52, "
    "61.57; on the release's hidden test responses of its 8 subjects; the first, the Memory Encoding Model, is an "
    "ensemble that also takes the previous trials' responses as input, 66.80 for its best single model)"
)


def headline_table(
    comparison: str | Path,
    retrieval: str | Path | None = None,
    probe: str | Path | None = None,
    synthetic_checks: str | Path | None = None,
    training: str | Path | None = None,
    summary: str | Path | None = None,
) -> pd.DataFrame:
    """One row per headline number: section, what, value, reference (what it is compared with), see (section).

    ``training`` (``results/models/training.csv``): a first row with the number of training jobs that stopped at
    their epoch cap (0 when every model converged), then one row per such job. ``summary`` (afo's summary.csv):
    the challenge score of each dataset that has one, pooled over its subjects, beside the published numbers.
    """
    rows = []
    if training is not None:
        jobs = read_table(training)
        capped = stopped_at_cap(jobs)
        rows.append(
            [
                "Training",
                f"models stopped at train.max_epochs (not converged), of {len(jobs)} training jobs",
                len(capped),
                0,
                "results/models/training.csv",
            ]
        )
        for r in capped.itertuples():
            rows.append(
                [
                    "Training",
                    f"{r.model}: stopped at its cap after {r.epochs} epochs, best at epoch {r.best_epoch}: raise "
                    "train.max_epochs",
                    r.val_r,
                    None,
                    "results/models/training.csv",
                ]
            )
    table = read_table(comparison)
    overall = table[table["area"] == "all"]
    for r in overall.itertuples():
        d = r._asdict()
        if "naivemix" in d:
            rows.append(
                [
                    "Encoding",
                    f"{r.dataset}: mean test r, afo (reference: naivemix)",
                    d["afo"],
                    d["naivemix"],
                    "1. Encoding",
                ]
            )
        else:
            rows.append(["Encoding", f"{r.dataset}: mean test r, afo", d["afo"], None, "1. Encoding"])
    if summary is not None:
        rows += challenge_rows(read_table(summary))
    if retrieval is not None:
        ret = read_table(retrieval)
        everything = ret[ret["roi_set"] == "all"]
        for dataset, g in everything.groupby("dataset"):
            rows.append(
                [
                    "Decoding",
                    f"{dataset}: top-1 retrieval, all voxels, mean over subjects (reference: chance)",
                    g["top1"].mean(),
                    g["chance_top1"].mean(),
                    "4. Decoding",
                ]
            )
    if probe is not None:
        p = read_table(probe)
        for (dataset, extractor), g in p[p["role"] == "holdout"].groupby(["dataset", "extractor"]):
            rows.append(
                [
                    "Linear probing (holdout)",
                    f"{dataset}: median test r of {extractor}",
                    g["r_test"].median(),
                    None,
                    "3. Linear probing",
                ]
            )
    if synthetic_checks is not None:
        checks = json.loads(Path(synthetic_checks).read_text())
        for dataset, c in checks["datasets"].items():
            if c.get("retinotopy"):
                rows.append(
                    [
                        "Synthetic brain",
                        f"{dataset}: r(RetinaMap u, true RF centre), x / y",
                        c["retinotopy"]["mean_r_x"],
                        c["retinotopy"]["mean_r_y"],
                        "6. Synthetic-brain checks",
                    ]
                )
    return pd.DataFrame(rows, columns=COLUMNS)


def challenge_rows(summary: pd.DataFrame) -> list[list]:
    """Headline rows of the challenge score (median over every vertex of all subjects, mean as reference), then
    the published numbers, labelled as such; none when no dataset has the score."""
    if "challenge_score_median" not in summary:
        return []
    pooled = summary[(summary["subject"].astype(str) == "all") & (summary["roi"] == "all")]
    pooled = pooled[pooled["challenge_score_median"].notna()]
    rows = [
        [
            "Encoding (Algonauts 2023 score)",
            f"{r.dataset}: challenge score of afo {test_split_words(summary, r.dataset)}, median over the vertices of "
            "all subjects (reference: their mean)",
            r.challenge_score_median,
            r.challenge_score_mean,
            "1. Encoding",
        ]
        for r in pooled.itertuples()
    ]
    if rows:
        rows.append(
            ["Encoding (Algonauts 2023 score)", PUBLISHED_NOTE, PUBLISHED_CHALLENGE[0], None, "docs/datasets.md"]
        )
    return rows


TEST_SPLIT_WORDS = {
    "release": "on the release's test responses",
    "held_out": "on images held out of the release's training images (the release has no test responses; its test "
    "images are prediction-only), not comparable with the leaderboard",
}


def test_split_words(summary: pd.DataFrame, dataset: str) -> str:
    """Where a dataset's test trials came from, in words, from summary.csv's per-subject ``test_split``."""
    if "test_split" not in summary:
        return "on this run's test split"
    kinds = summary.loc[(summary["dataset"] == dataset) & summary["test_split"].notna(), "test_split"]
    found = sorted(set(kinds.astype(str)))
    if not found or found == ["dataset"]:
        return "on the dataset's test split"
    return "; ".join(TEST_SPLIT_WORDS.get(k, f"on test split {k!r}") for k in found)


def write_headline(table: pd.DataFrame, out: str | Path) -> Path:
    """The front page as HTML (a report item)."""
    from afo.report import write_html_table

    return write_html_table(
        table,
        out,
        "afo at a glance",
        "The headline numbers of this run; each row names the report section with the details. "
        "reference: the number the value is compared with (naivemix, chance, or the y axis).",
    )
