"""Model comparison tables: mean test r per model and area (the dataset's own ROI label) and overall."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd


def comparison_table(voxel_files: Mapping[str, str | Path]) -> pd.DataFrame:
    """One row per dataset and area (plus area 'all'), one column of mean r_test per model, in the given order.

    Areas are the datasets' own ROI labels (``dataset_roi``); voxels without one count only under 'all'.
    """
    frames = []
    for name, path in voxel_files.items():
        v = pd.read_csv(path, dtype={"dataset_roi": str, "roi": str}, keep_default_na=True)
        v["dataset_roi"] = v["dataset_roi"].fillna("")
        per_area = v[v["dataset_roi"] != ""].groupby(["dataset", "dataset_roi"])["r_test"].mean()
        overall = v.groupby("dataset")["r_test"].mean()
        overall.index = pd.MultiIndex.from_arrays([overall.index, ["all"] * len(overall)], names=["dataset", "dataset_roi"])
        frames.append(pd.concat([per_area, overall]).rename(name))
    table = pd.concat(frames, axis=1).reset_index().rename(columns={"dataset_roi": "area"})
    return table.sort_values(["dataset", "area"]).reset_index(drop=True)
