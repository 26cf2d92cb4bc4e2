"""The ablation table (afo.evaluation.tables) and the HTML/CSV table helpers (afo.report)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from afo.evaluation.tables import ablation_table, write_ablation_outputs
from afo.io.tables import natural_key, ordered
from afo.report import html_table

GROUPS = {"V1": "early", "V2": "early", "V4": "mid", "LO": "late"}


def _voxels(path, offset: float, seed: int = 0):
    """A voxels.csv of two subjects x 8 voxels; r_test = base + offset, one bad voxel (NaN) per subject."""
    rows = []
    for subject in ("subj02", "subj10"):
        for v in range(8):
            area = ["V1", "V2", "V4", "LO"][v // 2]
            r = np.nan if v == 7 else 0.1 * (v % 4) + offset
            rows.append(
                {
                    "dataset": "synth",
                    "subject": subject,
                    "voxel": v,
                    "roi": str(v % 2),
                    "x": 0,
                    "y": 0,
                    "z": 0,
                    "u_x": 0,
                    "u_y": 0,
                    "layer": 0,
                    "eta_0": 1.0,
                    "r_val": r,
                    "r_test": r,
                    "nc": 50.0 if v < 4 else np.nan,
                    "r_test_norm": (r**2 / 0.5) if v < 4 else np.nan,
                    "dataset_roi": area,
                }
            )
    pd.DataFrame(rows).sample(frac=1, random_state=seed).to_csv(path, index=False)
    return path


@pytest.fixture
def tables(tmp_path):
    files = {"afo": _voxels(tmp_path / "a.csv", 0.2), "naivemix": _voxels(tmp_path / "b.csv", 0.1, seed=1)}
    veroi = pd.DataFrame(
        [
            {"dataset": "synth", "subject": s, "voxel": v, "roi": str(v // 4)}
            for s in ("subj02", "subj10")
            for v in range(7)
        ]
    )  # the bad voxel 7 has no veROI
    veroi.to_csv(tmp_path / "veroi.csv", index=False)
    return files, tmp_path / "veroi.csv"


def test_rows_and_means(tables):
    files, veroi = tables
    t = ablation_table(files, veroi, GROUPS)
    assert list(t.columns) == ["dataset", "subject", "roi_set", "roi", "metric", "n_voxels", "afo", "naivemix"]
    mean = t[t["metric"] == "mean_r"]
    # Subjects in natural order, then the pooled 'all'; ROI sets all, group, area, veroi.
    assert list(dict.fromkeys(mean["subject"])) == ["subj02", "subj10", "all"]
    one = mean[mean["subject"] == "subj02"]
    assert list(dict.fromkeys(one["roi_set"])) == ["all", "group", "area", "veroi"]
    assert list(one[one["roi_set"] == "group"]["roi"]) == ["early", "mid", "late"]
    assert list(one[one["roi_set"] == "area"]["roi"]) == ["V1", "V2", "V4", "LO"]  # by group, not alphabetically
    # all voxels of one subject: r = 0.1 * (v % 4) + offset over the 7 finite voxels.
    r = np.array([0.1 * (v % 4) for v in range(7)])
    row = one[one["roi_set"] == "all"].iloc[0]
    assert row["n_voxels"] == 7
    assert row["afo"] == pytest.approx(r.mean() + 0.2) and row["naivemix"] == pytest.approx(r.mean() + 0.1)
    late = one[(one["roi_set"] == "group") & (one["roi"] == "late")].iloc[0]
    assert late["n_voxels"] == 1 and late["afo"] == pytest.approx(0.1 * 2 + 0.2)  # voxel 6 (voxel 7 is NaN)
    pooled = mean[(mean["subject"] == "all") & (mean["roi_set"] == "veroi") & (mean["roi"] == "0")].iloc[0]
    assert pooled["n_voxels"] == 8
    # median_nc only where the noise ceiling is known (voxels 0-3: V1, V2).
    nc = t[t["metric"] == "median_nc"]
    assert set(nc[nc["roi_set"] == "area"]["roi"]) == {"V1", "V2"}


def test_without_groups_or_veroi(tables):
    files, _ = tables
    t = ablation_table(files)
    assert set(t["roi_set"]) == {"all", "area"}


def test_writes_csv_html_and_the_comparison_view(tables, tmp_path):
    files, veroi = tables
    report = write_ablation_outputs(
        files, veroi, {"V1": "early"}, tmp_path / "t.csv", tmp_path / "t.html", tmp_path / "c.csv"
    )
    assert report["models"] == ["afo", "naivemix"]
    table = pd.read_csv(tmp_path / "t.csv", dtype={"roi": str})
    assert {"afo", "naivemix"} <= set(table.columns) and "early" in set(table["roi"])
    page = (tmp_path / "t.html").read_text()
    assert page.count("<tr>") == len(table) + 1 and 'class="best"' in page
    # comparison.csv: the pooled mean_r rows of every dataset for all voxels and each area, nothing else.
    comparison = pd.read_csv(tmp_path / "c.csv", dtype={"area": str})
    pooled = table[(table["subject"] == "all") & (table["metric"] == "mean_r") & table["roi_set"].isin(["all", "area"])]
    assert len(comparison) == len(pooled) and list(comparison.columns) == ["dataset", "area", "afo", "naivemix"]
    mine = comparison.set_index(["dataset", "area"])["afo"]
    for row in pooled.itertuples():
        assert mine[(row.dataset, row.roi)] == pytest.approx(row.afo, abs=1e-4)


def test_html_table_bolds_row_maximum_and_escapes():
    t = pd.DataFrame({"roi": ["<V1>", "all"], "a": [0.1, 0.5], "b": [0.3, np.nan]})
    page = html_table(t, "T & U", note="x < y", best_of=["a", "b"])
    assert "&lt;V1&gt;" in page and "T &amp; U" in page and "x &lt; y" in page
    assert '<td class="best">0.300</td>' in page
    assert page.count('class="best"') == 1  # the second row has one finite value: nothing to compare


def test_natural_order():
    assert ordered(["10", "2", "all", "1"], first=["all"]) == ["all", "1", "2", "10"]
    assert sorted(["subj10", "subj2"], key=natural_key) == ["subj2", "subj10"]
