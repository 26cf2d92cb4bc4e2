"""Readers of the tables afo writes and reads back: ROI assignments and per-voxel score tables (voxels.csv).

Labels stay strings everywhere (an ROI called "1" is "1", never the integer 1), and subjects are keyed
``"<dataset>/<subject>"`` across datasets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from afo.errors import InputError
from afo.io import atomic_write_text

ROI_COLUMNS = ("dataset", "subject", "voxel", "roi")
LABEL_DTYPES = {"dataset": str, "subject": str, "roi": str, "dataset_roi": str, "roi_set": str, "area": str}


class TableError(InputError):
    """A table afo reads (ROI assignment, voxels.csv) lacks a column or a value it needs."""


def subject_key(dataset: str, subject: str) -> str:
    """The key naming one subject across datasets."""
    return f"{dataset}/{subject}"


def read_table(path: str | Path) -> pd.DataFrame:
    """Any CSV afo writes, with its label columns read as strings (missing labels become "")."""
    table = pd.read_csv(path, dtype=LABEL_DTYPES)
    for col in ("roi", "dataset_roi"):
        if col in table:
            table[col] = table[col].fillna("")
    return table


def read_roi_table(path: str | Path) -> pd.DataFrame:
    """An ROI assignment table (columns dataset, subject, voxel, roi; one row per voxel)."""
    table = read_table(path)
    missing = set(ROI_COLUMNS) - set(table.columns)
    if missing:
        raise TableError(
            f"{path}: missing column(s) {sorted(missing)}; an ROI table has columns {', '.join(ROI_COLUMNS)}"
        )
    return table


def roi_labels(path: str | Path) -> list[str]:
    """The distinct ROI labels of an ROI table, in the order they first appear."""
    return read_roi_table(path)["roi"].unique().tolist()


def read_roi_selection(path: str | Path, roi: str | None = None) -> dict[str, np.ndarray]:
    """Sorted voxel indices per subject key from an ROI table; ``roi`` None selects every listed voxel."""
    table = read_roi_table(path)
    if roi is not None:
        table = table[table["roi"] == str(roi)]
        if table.empty:
            raise TableError(f"{path}: no voxel has roi {roi!r}; the table's ROIs are {roi_labels(path)}")
    return {
        subject_key(d, s): np.sort(g["voxel"].to_numpy(dtype=np.int64))
        for (d, s), g in table.groupby(["dataset", "subject"], sort=True)
    }


def read_voxels(path: str | Path) -> pd.DataFrame:
    """A ``results/encoding/<model>/voxels.csv`` (the output contract in docs/design.md)."""
    return read_table(path)


def write_csv(table: pd.DataFrame, path: str | os.PathLike, float_format: str = "%.6g") -> Path:
    """CSV without the index, written atomically."""
    return atomic_write_text(path, table.to_csv(index=False, float_format=float_format))


def natural_key(label: object) -> tuple:
    """Sort key that puts "2" before "10" and numbers before words ("all" stays where the caller puts it)."""
    text = str(label)
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def ordered(labels: Iterable[object], first: Sequence[object] = ()) -> list:
    """Unique labels: those in ``first`` (in that order) then the rest in natural order."""
    labels = list(dict.fromkeys(labels))
    head = [x for x in first if x in labels]
    return head + sorted((x for x in labels if x not in head), key=natural_key)
