"""The folder dataset ("bring your own data"), exactly as DESIGN.md specifies it.

Layout under ``root``::

    dataset.yaml                     name: <str>; modality: fmri | eeg | meg
    images/                          stimulus images (any format PIL reads)
    <subject>/responses.npy          float32 [n_trials, n_voxels]; NaN allowed (that voxel/trial is masked)
    <subject>/trials.csv             columns: image (file name in images/), split (train | val | test); split optional
    <subject>/coords.npy             float32 [n_voxels, 3]
    <subject>/rois.csv               optional: columns voxel (int), roi (str)
    <subject>/noise_ceiling.npy      optional [n_voxels], percent (0-100)

Every folder holding ``responses.npy`` is a subject. Without a split column, images are split about 90:6:4
by image and images shown more than once go to test. Without noise_ceiling.npy the noise ceiling comes from
repeats. Voxels that are NaN on every trial are masked and reported, never dropped: voxel indices stay those
of the user's files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from afo.data.splits import split_by_image
from afo.data.store import MODALITIES, SPLITS, StoreError, StoreWriter

OPTIONS = {"seed": "seed of the default split (used only when trials.csv has no split column)"}


class FolderDatasetError(StoreError):
    """The folder dataset does not follow the contract; the message names the file, the field and the fix."""


def _fail(path: Path, problem: str, fix: str) -> FolderDatasetError:
    return FolderDatasetError(f"{path}: {problem}. Fix: {fix}")


def read_dataset_yaml(root: Path) -> dict:
    path = root / "dataset.yaml"
    if not path.is_file():
        raise _fail(path, "missing", "create it with `name: <str>` and `modality: fmri|eeg|meg`")
    meta = yaml.safe_load(path.read_text()) or {}
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise _fail(path, "field `name` missing or not a string", "add `name: <dataset name>`")
    if meta.get("modality") not in MODALITIES:
        raise _fail(path, f"field `modality` is {meta.get('modality')!r}", f"set it to one of {list(MODALITIES)}")
    return meta


def find_subjects(root: Path) -> list[Path]:
    """Every folder below ``root`` that holds responses.npy, sorted by path."""
    subjects = sorted(p.parent for p in root.rglob("responses.npy") if p.parent != root)
    if not subjects:
        raise _fail(root, "no subject folder (a folder holding responses.npy)", "add <subject>/responses.npy")
    return subjects


def _read_trials(path: Path, n_trials: int, image_files: set[str]) -> pd.DataFrame:
    if not path.is_file():
        raise _fail(path, "missing", "write one row per trial with columns `image` (and optionally `split`)")
    trials = pd.read_csv(path, dtype={"image": str, "split": str}, keep_default_na=False)
    if "image" not in trials.columns:
        raise _fail(path, f"no column `image` (columns: {list(trials.columns)})", "name the stimulus file of each trial in a column `image`")
    if len(trials) != n_trials:
        raise _fail(path, f"{len(trials)} rows but responses.npy has {n_trials} trials", "one row per trial, in the order of responses.npy")
    missing = sorted(set(trials["image"]) - image_files)
    if missing:
        raise _fail(path, f"field `image` names {len(missing)} file(s) absent from images/, e.g. {missing[:3]}", "add the images or correct the names")
    if "split" in trials.columns:
        unknown = sorted(set(trials["split"]) - set(SPLITS))
        if unknown:
            raise _fail(path, f"field `split` has unknown label(s) {unknown}", f"use only {list(SPLITS)} (or drop the column for the default split)")
    return trials


def _read_array(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise _fail(path, "missing", f"write {what}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise _fail(path, f"not a plain numpy array ({err})", f"save {what} with numpy.save") from err


def _read_rois(path: Path, n_voxels: int) -> np.ndarray:
    table = pd.read_csv(path, keep_default_na=False)
    if not {"voxel", "roi"} <= set(table.columns):
        raise _fail(path, f"columns are {list(table.columns)}", "use columns `voxel` (int) and `roi` (str)")
    voxel = pd.to_numeric(table["voxel"], errors="coerce")
    if voxel.isna().any() or (voxel < 0).any() or (voxel >= n_voxels).any():
        raise _fail(path, f"field `voxel` must be integers in [0, {n_voxels})", "index voxels as columns of responses.npy")
    labels = np.full(n_voxels, "", dtype=object)
    labels[voxel.astype(int).to_numpy()] = table["roi"].astype(str).to_numpy()
    return labels


def prepare(root: str | Path, out: str | Path, *, image_size: int, options: dict | None = None) -> dict:
    """Read a folder dataset and write its prepared store to ``out``; returns a report per subject."""
    root = Path(root)
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"folder dataset {root}: unknown option(s) {unknown}; valid options: {OPTIONS}")
    seed = int(options.get("seed", 0))
    meta = read_dataset_yaml(root)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise _fail(images_dir, "missing", "put the stimulus images in images/")
    subjects = find_subjects(root)
    image_files = {p.name for p in images_dir.iterdir() if p.is_file()}

    # Read and check every subject's small files first: a mistake is reported before minutes of work.
    plans = []
    for sub_dir in subjects:
        responses = np.load(sub_dir / "responses.npy", mmap_mode="r", allow_pickle=False)
        if responses.ndim != 2:
            raise _fail(sub_dir / "responses.npy", f"shape {responses.shape}", "save a 2-D array [n_trials, n_voxels]")
        n_trials, n_voxels = responses.shape
        trials = _read_trials(sub_dir / "trials.csv", n_trials, image_files)
        coords = _read_array(sub_dir / "coords.npy", f"float32 [{n_voxels}, 3] voxel coordinates")
        if coords.shape != (n_voxels, 3):
            raise _fail(sub_dir / "coords.npy", f"shape {coords.shape} but responses.npy has {n_voxels} voxels", f"save coordinates as [{n_voxels}, 3]")
        if not np.isfinite(coords).all():
            rows = np.flatnonzero(~np.isfinite(coords).all(1))
            raise _fail(sub_dir / "coords.npy", f"non-finite coordinates for {rows.size} voxel(s), e.g. {rows[:5].tolist()}", "give every voxel finite coordinates")
        rois = _read_rois(sub_dir / "rois.csv", n_voxels) if (sub_dir / "rois.csv").is_file() else None
        nc = None
        if (sub_dir / "noise_ceiling.npy").is_file():
            nc = _read_array(sub_dir / "noise_ceiling.npy", "the noise ceiling [n_voxels] in percent")
            if nc.shape != (n_voxels,):
                raise _fail(sub_dir / "noise_ceiling.npy", f"shape {nc.shape}", f"save [{n_voxels}] values in percent (0-100)")
        plans.append((sub_dir, responses, trials, coords, rois, nc))

    used = sorted({name for _, _, trials, *_ in plans for name in trials["image"]})
    index = {name: i for i, name in enumerate(used)}

    def load(name: str) -> Image.Image:
        try:
            return Image.open(images_dir / name)
        except (UnidentifiedImageError, OSError) as err:
            raise _fail(images_dir / name, f"not an image PIL can read ({err})", "replace or convert the file") from err

    report: dict = {"dataset": meta["name"], "modality": meta["modality"], "n_images": len(used), "subjects": {}}
    with StoreWriter(out, name=meta["name"], modality=meta["modality"], source=f"folder:{root.resolve()}", image_size=image_size) as writer:
        writer.write_images(
            (load(n) for n in tqdm(used, desc=f"{meta['name']}: images", file=sys.stderr, disable=None)), used
        )
        for sub_dir, responses, trials, coords, rois, nc in plans:
            subject = str(sub_dir.relative_to(root)).replace("/", "_")
            trial_image = trials["image"].map(index).to_numpy()
            if "split" in trials.columns:
                split = trials["split"].to_numpy()
            else:
                split = split_by_image(trial_image, seed=seed)
            sw = writer.subject(subject, responses.shape[1])
            for start in range(0, responses.shape[0], 1024):
                stop = start + 1024
                sw.append(np.asarray(responses[start:stop], dtype=np.float32), trial_image[start:stop], split[start:stop])
            sub_report = sw.finish(coords, rois={"roi": rois} if rois is not None else None, noise_ceiling=nc)
            if sub_report["n_bad_voxels"]:
                print(
                    f"{sub_dir / 'responses.npy'}: {sub_report['all_nan_voxels']} voxel(s) are NaN on every trial and "
                    f"{sub_report['constant_voxels']} constant; they are masked (kept in place, excluded from training and scores)",
                    file=sys.stderr,
                )
            report["subjects"][subject] = sub_report
    return report
