"""Check a downloaded dataset before preparing it: open its files as the adapter will, write nothing.

``check_dataset(format, root, options)`` runs the format's ``check`` (the :mod:`afo.data.adapter` contract):
the adapter's own open phase (metadata, headers, trial lists, image files, movie versions, splits; the same code
``prepare`` runs, so the same errors), then the responses streamed the way ``prepare`` reads them, counting per
subject what a store would hold (:class:`afo.data.adapter.CheckRow`):

    dataset, subject      the format and the subject (or group average) name the store would use
    trials, images        trials kept and distinct images they show
    voxels                voxels (grayordinates) kept
    splits                trials per split {"train", "val", "test"}
    nan_voxels            kept voxels with a NaN response in at least one trial (None with read_data=False)

The first problem stops the check of that dataset with the adapter's error (a :class:`afo.errors.UserError`
naming the file and the fix); ``afo check-data`` goes on with the next dataset and fails if any failed. A format
without a checker has its root checked only. Nothing is written: no store, no scratch file. Memory stays bounded as in ``prepare`` (one
slice of rows, one session, one run or one subject at a time).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afo.data.adapter import CheckRow
from afo.data.files import DatasetFileNotFoundError
from afo.data.registry import get_adapter


def check_dataset(
    format: str, root: str | Path, options: Mapping[str, Any] | None = None, *, read_data: bool = True
) -> list[CheckRow]:
    """Per-subject counts of a downloaded dataset (see the module docstring), or the first problem as a UserError.

    ``options`` are the dataset's adapter options (the config entry's ``options``). ``read_data=False`` skips
    streaming the responses (faster; ``nan_voxels`` is then None and problems inside the data files, such as a
    THINGS-fMRI voxel_id out of order, are not seen).
    """
    adapter = get_adapter(format)
    root = Path(root)
    if not root.is_dir():  # checked for every format, those without a checker too
        raise DatasetFileNotFoundError(
            f"{root}: dataset root not found; set the dataset's root in the config to the folder you downloaded it to"
        )
    return adapter.check(root, dict(options or {}), read_data=read_data)
