"""The ablation table, in the form of the paper's Tables 2 and 3, from the voxels.csv of every evaluated model.

One row per dataset, subject, ROI and metric; one column per model (afo, naivemix, stage1, stage2, noDK,
randROI, the TopyNeck ablations: whatever the workflow evaluated), in the order given.

Rows:

- ``subject``: every subject of the dataset, then ``all`` (the dataset's voxels pooled over its subjects:
  "the average Pearson correlation coefficient across all voxels", as in the paper);
- ``roi_set`` / ``roi``: ``all`` / ``all`` (every voxel); ``group`` / early, mid, late ... (the dataset's own
  ROI labels mapped through ``area_groups``; only when a mapping is configured); ``area`` / the dataset's own
  ROI labels (``dataset_roi`` of voxels.csv, e.g. V1..LO on the synthetic brain); ``veroi`` / the veROI ids
  (results/rois/veroi.csv), the same parcellation for every model so the columns stay comparable;
- ``metric``: ``mean_r`` = mean test Pearson r over the voxels (the paper's tables), ``median_nc`` = median
  noise-normalised score r·|r| / (nc / 100) (the paper's "NSD(NC)"; rows only where the noise ceiling is known).

``n_voxels`` counts the voxels of the row with a finite score in the first model (bad voxels have no score in
any model and drop out of every mean).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from afo.io.tables import ordered, read_roi_table, read_voxels, write_csv

KEYS = ["dataset", "subject", "voxel"]
ROI_SET_ORDER = ["all", "group", "area", "veroi"]
METRICS = {"mean_r": ("r_test", "mean"), "median_nc": ("r_test_norm", "median")}


def merged_scores(voxel_files: Mapping[str, str | Path], veroi: str | Path | None = None) -> pd.DataFrame:
    """One row per voxel: keys, dataset_roi, veroi, and r_test / r_test_norm per model (``r_test:<model>``)."""
    if not voxel_files:
        raise ValueError("ablation table: no voxels.csv given")
    base = None
    for name, path in voxel_files.items():
        v = read_voxels(path)
        missing = {*KEYS, "r_test", "r_test_norm", "dataset_roi"} - set(v.columns)
        if missing:
            raise ValueError(f"{path}: not a voxels.csv (missing columns {sorted(missing)})")
        part = v[KEYS + ["r_test", "r_test_norm"]].rename(
            columns={"r_test": f"r_test:{name}", "r_test_norm": f"r_test_norm:{name}"}
        )
        if base is None:
            base = v[KEYS + ["dataset_roi"]].merge(part, on=KEYS, how="left")
        else:
            base = base.merge(part, on=KEYS, how="outer")
    base["dataset_roi"] = base["dataset_roi"].fillna("")
    if veroi is not None:
        labels = read_roi_table(veroi)
        base = base.merge(labels[KEYS + ["roi"]].rename(columns={"roi": "veroi"}), on=KEYS, how="left")
    else:
        base["veroi"] = np.nan
    base["veroi"] = base["veroi"].fillna("")
    return base


def _roi_columns(scores: pd.DataFrame, area_groups: Mapping[str, str]) -> list[tuple[str, pd.Series]]:
    sets = [("all", pd.Series("all", index=scores.index))]
    if area_groups:
        sets.append(("group", scores["dataset_roi"].map(lambda a: area_groups.get(a, "")).fillna("")))
    sets.append(("area", scores["dataset_roi"]))
    sets.append(("veroi", scores["veroi"]))
    return sets


def ablation_table(
    voxel_files: Mapping[str, str | Path],
    veroi: str | Path | None = None,
    area_groups: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The ablation table (see the module docstring); ``voxel_files`` = model name -> voxels.csv, in column order."""
    area_groups = dict(area_groups or {})
    models = list(voxel_files)
    scores = merged_scores(voxel_files, veroi)
    first = f"r_test:{models[0]}"
    group_order = list(dict.fromkeys(area_groups.values()))
    # Areas in the order of their groups (V1 V2 V3 before V4 before LO), then by name.
    area_rank = {a: i for i, a in enumerate(sorted(area_groups, key=lambda a: group_order.index(area_groups[a])))}
    rows = []
    for dataset, ds in scores.groupby("dataset", sort=True):
        subjects = ordered(ds["subject"].unique()) + ["all"]
        for subject in subjects:
            sub = ds if subject == "all" else ds[ds["subject"] == subject]
            for roi_set, labels in _roi_columns(sub, area_groups):
                labels = labels[labels != ""]
                if labels.empty:
                    continue
                if roi_set == "group":
                    names = [g for g in group_order if g in set(labels)]
                elif roi_set == "area":
                    present = set(labels)
                    names = sorted((a for a in present if a in area_rank), key=area_rank.get)
                    names += ordered(a for a in present if a not in area_rank)
                else:
                    names = ordered(labels.unique(), first=["all"])
                for roi in names:
                    members = sub.loc[labels.index[labels == roi]]
                    n = int(np.isfinite(members[first]).sum())
                    for metric, (column, how) in METRICS.items():
                        values = {m: getattr(members[f"{column}:{m}"], how)() for m in models}
                        if metric == "median_nc" and not any(np.isfinite(v) for v in values.values()):
                            continue
                        rows.append(
                            {
                                "dataset": dataset,
                                "subject": subject,
                                "roi_set": roi_set,
                                "roi": roi,
                                "metric": metric,
                                "n_voxels": n,
                                **values,
                            }
                        )
    columns = ["dataset", "subject", "roi_set", "roi", "metric", "n_voxels", *models]
    return pd.DataFrame(rows, columns=columns)


NOTE = (
    "Mean test Pearson r (metric mean_r) and median noise-normalised score r·|r|/(nc/100) (metric median_nc) per "
    "dataset, subject (all = the dataset's voxels pooled) and ROI: every voxel (all), the dataset's own areas "
    "(area) and their groups (group, from evaluation.area_groups), and the veROIs (veroi, the same parcellation for "
    "every model). One column per evaluated model; the best of each row in bold."
)


def comparison_view(ablation: pd.DataFrame) -> pd.DataFrame:
    """comparison.csv: the ablation table's mean test r of the pooled subjects, per dataset and area (and 'all').

    One row per dataset and area (the datasets' own ROI labels; voxels without one count only under 'all'),
    one column per model: a view of :func:`ablation_table`, never computed separately.
    """
    models = [c for c in ablation.columns if c not in ("dataset", "subject", "roi_set", "roi", "metric", "n_voxels")]
    rows = ablation[
        (ablation["subject"] == "all") & (ablation["metric"] == "mean_r") & ablation["roi_set"].isin(["all", "area"])
    ]
    table = rows[["dataset", "roi", *models]].rename(columns={"roi": "area"})
    return table.sort_values(["dataset", "area"]).reset_index(drop=True)


def write_ablation_outputs(
    voxel_files: Mapping[str, str | Path],
    veroi: str | Path | None,
    area_groups: Mapping[str, str],
    table_path: str | Path,
    html_path: str | Path,
    comparison_path: str | Path,
) -> dict:
    """ablation_table.csv, its HTML rendering, and comparison.csv (its view), from every model's voxels.csv."""
    from afo.report import write_html_table

    table = ablation_table(voxel_files, veroi, area_groups)
    write_csv(table, table_path)
    write_html_table(table, html_path, "Ablation table (paper Tables 2 and 3)", NOTE, best_of=list(voxel_files))
    comparison = comparison_view(table)
    write_csv(comparison, comparison_path, float_format="%.4f")
    return {"rows": len(table), "models": list(voxel_files), "comparison_rows": len(comparison)}
