"""Check a downloaded dataset before preparing it: open its files as the adapter will, write nothing.

``check_dataset(format, root, options)`` runs the adapter's own open phase (``open_dataset``: metadata, headers,
trial lists, image files, movie versions, splits; the same code :func:`prepare` runs, so the same errors) and
then streams the responses the way ``prepare`` reads them, counting per subject what a store would hold:

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

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from afo.data import algonauts2021, bold5000, folder, hcp_movie, things_fmri
from afo.data.files import DatasetFileNotFoundError
from afo.data.options import resolve_options
from afo.data.store import SPLIT_CODE, SPLITS
from afo.errors import UserError


class UnsupportedCheckError(UserError):
    """check-data has no checker for this dataset format."""


def _row(fmt: str, subject: str, split_codes: np.ndarray, images: int, voxels: int, nan_voxels: int | None) -> dict:
    codes = np.asarray(split_codes)
    return {
        "dataset": fmt,
        "subject": subject,
        "trials": int(codes.size),
        "images": int(images),
        "voxels": int(voxels),
        "splits": {name: int((codes == SPLIT_CODE[name]).sum()) for name in SPLITS},
        "nan_voxels": None if nan_voxels is None else int(nan_voxels),
    }


def _nan_columns(blocks: Iterable[np.ndarray], n_voxels: int) -> int:
    """Columns (voxels) with a NaN in any of the [trials, voxels] blocks (all covering the same voxels)."""
    nan = np.zeros(n_voxels, dtype=bool)
    for block in blocks:
        nan |= np.isnan(block).any(axis=0)
    return int(nan.sum())


def _check_things_fmri(root: Path, options: dict, read_data: bool) -> list[dict]:
    ds = things_fmri.open_dataset(root, options)
    rows = []
    for subj in ds.subjects:
        stims = ds.trial_stimuli(subj)
        codes = np.array([ds.split_of[s] for s in stims], dtype=np.int64)
        nan = None
        if read_data:  # slices of voxel rows, as prepare reads them; voxel_id order is checked on the way
            nan = sum(int(np.isnan(block).any(axis=0).sum()) for block in things_fmri.voxel_blocks(subj))
        rows.append(_row("things_fmri", subj.name, codes, len(set(stims)), len(subj.rows), nan))
    return rows


def _check_bold5000(root: Path, options: dict, read_data: bool) -> list[dict]:
    ds = bold5000.open_dataset(root, options)
    rows = []
    for subj in ds.subjects:
        paths = ds.trial_paths[subj.name]
        codes = np.array([ds.split_of[p.name] for p in paths], dtype=np.int64)
        nan = _nan_columns((subj.read_session(s) for s in subj.sessions), len(subj.ijk)) if read_data else None
        rows.append(_row("bold5000", subj.name, codes, len({p.name for p in paths}), len(subj.ijk), nan))
    return rows


def _check_algonauts2021(root: Path, options: dict, read_data: bool) -> list[dict]:
    ds = algonauts2021.open_dataset(root, options)
    rows = []
    for subj in ds.subjects:
        # the pickles hold everything at once: loading one is the only way to see its shape (one at a time)
        train, _, _ = subj.load()
        codes = np.repeat(ds.video_split, train.shape[1])
        nan = int(np.isnan(train).any(axis=(0, 1)).sum()) if read_data else None
        rows.append(_row("algonauts2021", subj.name, codes, len(ds.videos), train.shape[2], nan))
        del train
    return rows


def _check_hcp_movie(root: Path, options: dict, read_data: bool) -> list[dict]:
    ds = hcp_movie.open_dataset(root, options)
    rows = []
    for name, members, gp in ds.units():
        plans = [p for p in gp.plans if any(ds.files[s][p.run] is not None for s in members)]
        if not plans:
            continue  # prepare leaves such a subject out too (report: subjects_without_runs)
        codes = np.concatenate([p.split_of_frame for p in plans])
        images = len(np.unique(np.concatenate([p.image_of_frame for p in plans])))
        nan = None
        if read_data:
            runs = (
                (ds.space.read(ds.files[s][p.run], p.n_trs) for s in members if ds.files[s][p.run] is not None)
                for p in plans
            )
            nan = _nan_columns((x for per_run in runs for x in per_run), ds.n_voxels)
        rows.append(_row("hcp_movie", name, codes, images, ds.n_voxels, nan))
    return rows


def _check_folder(root: Path, options: dict, read_data: bool) -> list[dict]:
    """A folder dataset (also what ``format: synthetic`` is: the simulator's folder), through folder.py's checks."""
    seed = int(resolve_options(f"folder dataset {root}", options, folder.DEFAULTS)["seed"])
    folder.read_dataset_yaml(root)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise folder.FolderDatasetError(f"{images_dir}: missing. Fix: put the stimulus images in images/")
    image_files = {p.name for p in images_dir.iterdir() if p.is_file()}
    rows = []
    for sub_dir in folder.find_subjects(root):
        plan = folder._plan_subject(sub_dir, image_files, seed)  # the adapter's own per-subject checks
        responses = plan["responses"]  # memory-mapped [n_trials, n_voxels]
        nan = None
        if read_data:
            chunks = (np.asarray(responses[i : i + 1024]) for i in range(0, responses.shape[0], 1024))
            nan = _nan_columns(chunks, responses.shape[1])
        subject = str(sub_dir.relative_to(root)).replace("/", "_")  # the store's subject name, as prepare names it
        rows.append(_row("folder", subject, plan["split"], plan["trials"]["image"].nunique(), responses.shape[1], nan))
    return rows


CHECKERS: dict[str, Callable[[Path, dict, bool], list[dict]]] = {
    "folder": _check_folder,
    "things_fmri": _check_things_fmri,
    "bold5000": _check_bold5000,
    "algonauts2021": _check_algonauts2021,
    "hcp_movie": _check_hcp_movie,
}


def check_dataset(
    format: str, root: str | Path, options: dict | None = None, *, read_data: bool = True
) -> list[dict[str, Any]]:
    """Per-subject counts of a downloaded dataset (see the module docstring), or the first problem as a UserError.

    ``options`` are the dataset's adapter options (the config entry minus format and root). ``read_data=False``
    skips streaming the responses (faster; ``nan_voxels`` is then None and problems inside the data files, such
    as a THINGS-fMRI voxel_id out of order, are not seen).
    """
    root = Path(root)
    if not root.is_dir():  # checked for every format, those without a checker too
        raise DatasetFileNotFoundError(
            f"{root}: dataset root not found; set the dataset's root in the config to the folder you downloaded it to"
        )
    if format not in CHECKERS:
        raise UnsupportedCheckError(
            f"{root}: the root exists, but there is no checker for dataset format {format!r} yet (checked formats: "
            f"{sorted(CHECKERS)}); run `afo prepare` on it, which stops at the first malformed file"
        )
    return CHECKERS[format](root, dict(options or {}), read_data)
