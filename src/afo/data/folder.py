"""The folder dataset ("bring your own data"): the contract of docs/design.md, checked as docs/inputs.md says.

Layout under ``root``::

    dataset.yaml                     name: <str>; modality: fmri | eeg | meg; optional visual_angle: <degrees>;
                                     optional terms: <str> (the data's terms of use, copied into model cards)
    images/                          stimulus images (any format PIL reads; one frame each)
    <subject>/responses.npy          real numbers [n_trials, n_voxels]; NaN allowed (that voxel/trial is masked)
    <subject>/trials.csv             columns: image (file name in images/), split (train | val | test); split optional
    <subject>/coords.npy             float32 [n_voxels, 3]
    <subject>/rois.csv               optional: columns voxel (int), roi (str); one row per voxel at most
    <subject>/noise_ceiling.npy      optional [n_voxels], percent (0-100); NaN where unknown

Every folder holding ``responses.npy`` is a subject; a folder holding the other subject files without it is an
error. Without a split column, images are split about 90:6:4 by image and images shown more than once go to test;
either way every subject needs train and test trials. Without noise_ceiling.npy the noise ceiling comes from
repeats. Voxels without a finite value on any (training) trial and constant voxels are masked and reported, never
dropped: voxel indices stay those of the user's files. +-inf values are masked like NaN and reported as inf.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from afo.data.adapter import CheckRow, DatasetAdapter, check_row, nan_columns
from afo.data.bigbrain import BigBrain
from afo.data.media import load_image
from afo.data.noise_ceiling import check_percent
from afo.data.options import AdapterOptionError, resolve_options
from afo.data.splits import split_by_image
from afo.data.store import MODALITIES, SPLIT_CODE, SPLITS, StoreError, StoreWriter

OPTIONS = {
    "seed": "seed of the default split (used only when trials.csv has no split column)",
    "bigbrain": "true: the subjects (who saw the same images) become one subject, `bigbrain` (paper 4.1; afo.data.bigbrain)",
}
DEFAULTS = {"seed": 0, "bigbrain": False}
SUBJECT_FILES = ("responses.npy", "trials.csv", "coords.npy", "rois.csv", "noise_ceiling.npy")


class FolderDatasetError(StoreError):
    """The folder dataset does not follow the contract; the message names the file, the field and the fix."""


def _fail(path: Path, problem: str, fix: str) -> FolderDatasetError:
    problem = " ".join(problem.split())  # a library's multi-line reason still makes one line
    return FolderDatasetError(f"{path}: {problem}. Fix: {fix}")


def read_dataset_yaml(root: Path) -> dict:
    path = root / "dataset.yaml"
    if not path.is_file():
        raise _fail(path, "missing", "create it with `name: <str>` and `modality: fmri|eeg|meg`")
    try:
        meta = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise _fail(
            path, f"not valid YAML ({err})", "write `name: <str>` and `modality: fmri|eeg|meg`, one per line"
        ) from err
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise _fail(path, "field `name` missing or not a string", "add `name: <dataset name>`")
    if meta.get("modality") not in MODALITIES:
        raise _fail(path, f"field `modality` is {meta.get('modality')!r}", f"set it to one of {list(MODALITIES)}")
    angle = meta.get("visual_angle")
    if angle is not None and (isinstance(angle, bool) or not isinstance(angle, int | float) or not angle > 0):
        raise _fail(
            path,
            f"field `visual_angle` is {angle!r}",
            "give the full width of the (square) stimulus in degrees of visual angle, e.g. `visual_angle: 8.4`, "
            "or leave the field out",
        )
    terms = meta.get("terms")
    if terms is not None and (not isinstance(terms, str) or not terms.strip()):
        raise _fail(
            path,
            f"field `terms` is {terms!r}",
            "give the data's terms of use as one string, e.g. `terms: CC BY 4.0 (doi:...)`, or leave the field out",
        )
    return meta


def terms_of(entry: Mapping[str, Any]) -> str | None:
    """``terms`` of the entry's dataset.yaml (the data's terms of use), None when it states none."""
    root = Path(entry["root"])
    if not (root / "dataset.yaml").is_file():
        return None
    terms = read_dataset_yaml(root).get("terms")
    return None if terms is None else str(terms).strip()


def visual_angle_of(entry: Mapping[str, Any]) -> float | None:
    """``visual_angle`` of the entry's dataset.yaml, None when it has none. A missing dataset.yaml is left to
    ``prepare`` to report: the workflow asks this before anything runs."""
    root = Path(entry["root"])
    if not (root / "dataset.yaml").is_file():
        return None
    angle = read_dataset_yaml(root).get("visual_angle")
    return None if angle is None else float(angle)


def find_subjects(root: Path) -> list[Path]:
    """Every folder below ``root`` that holds responses.npy, sorted by path.

    A folder that holds other subject files (trials.csv, coords.npy, ...) but no responses.npy is an error, not
    a subject skipped without a word; so is a dataset without any subject.
    """
    found = {p.parent for name in SUBJECT_FILES for p in root.rglob(name) if p.parent != root}
    incomplete = sorted(d for d in found if not (d / "responses.npy").is_file())
    if incomplete:
        present = sorted(p.name for p in incomplete[0].iterdir())
        raise _fail(
            incomplete[0],
            f"a subject folder without responses.npy (it holds {present[:6]}); "
            f"{len(incomplete)} such folder(s): {[str(d.relative_to(root)) for d in incomplete[:5]]}",
            "add responses.npy [n_trials, n_voxels] (saved with numpy.save), or move the folder out of the dataset",
        )
    subjects = sorted(found)
    if not subjects:
        raise _fail(root, "no subject folder (a folder holding responses.npy)", "add <subject>/responses.npy")
    return subjects


def _read_trials(path: Path, n_trials: int, image_files: set[str]) -> pd.DataFrame:
    if not path.is_file():
        raise _fail(path, "missing", "write one row per trial with columns `image` (and optionally `split`)")
    trials = _read_csv(
        path, {"image": str, "split": str}, "columns `image` (and optionally `split`), one row per trial"
    )
    if "image" not in trials.columns:
        raise _fail(
            path,
            f"no column `image` (columns: {list(trials.columns)})",
            "name the stimulus file of each trial in a column `image`",
        )
    if len(trials) != n_trials:
        raise _fail(
            path,
            f"{len(trials)} rows but responses.npy has {n_trials} trials",
            "one row per trial, in the order of responses.npy",
        )
    missing = sorted(set(trials["image"]) - image_files)
    if missing:
        raise _fail(
            path,
            f"field `image` names {len(missing)} file(s) absent from images/, e.g. {missing[:3]}",
            "add the images or correct the names",
        )
    if "split" in trials.columns:
        unknown = sorted(set(trials["split"]) - set(SPLITS))
        if unknown:
            raise _fail(
                path,
                f"field `split` has unknown label(s) {unknown}",
                f"use only {list(SPLITS)} (or drop the column for the default split)",
            )
    return trials


def _read_csv(path: Path, dtype, layout: str) -> pd.DataFrame:
    """A CSV table read as text (empty cells stay ''); a file pandas cannot parse names itself."""
    try:
        return pd.read_csv(path, dtype=dtype, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise _fail(
            path, f"not a readable CSV table ({type(err).__name__}: {err})", f"write a CSV with {layout}"
        ) from err


def _read_options(options: Mapping[str, Any] | None, root: Path) -> dict:
    """The dataset's options: the default split's seed (an integer) and bigbrain (a boolean)."""
    opts = resolve_options(f"folder dataset {root}", options, DEFAULTS)
    if isinstance(opts["seed"], bool) or not isinstance(opts["seed"], int):
        raise AdapterOptionError(f"folder dataset {root}: option seed must be an integer, got {opts['seed']!r}")
    if not isinstance(opts["bigbrain"], bool):
        raise AdapterOptionError(
            f"folder dataset {root}: option bigbrain must be true or false, got {opts['bigbrain']!r}"
        )
    return opts


def _trial_split(path: Path, trials: pd.DataFrame, trial_image: np.ndarray, seed: int) -> np.ndarray:
    """Split code per trial [n_trials]: the file's split column, or the default split by image.

    Every subject needs training trials (to fit) and test trials (to score); the error says how to get them.
    """
    if "split" in trials.columns:
        split = np.array([SPLIT_CODE[s] for s in trials["split"]], dtype=np.int8)
    else:
        split = split_by_image(trial_image, seed=seed)
    for name in ("train", "test"):
        if not (split == SPLIT_CODE[name]).any():
            if "split" in trials.columns:
                fix = f"label the trials of some images `{name}` in the `split` column (splits are by image)"
            else:
                fix = (
                    f"add a `split` column that puts some images in {name}, or show more images (the default split "
                    f"of these {len(np.unique(trial_image))} image(s) has no {name} image; images shown more than "
                    "once go to test)"
                )
            raise _fail(path, f"no {name} trials", fix)
    return split


def _load_npy(path: Path, what: str, mmap: bool = False) -> np.ndarray:
    """A plain numeric array from ``path``; a missing, truncated, object or non-numeric file names itself."""
    if not path.is_file():
        raise _fail(path, "missing", f"write {what}")
    fix = f"save {what} with numpy.save (a plain numeric array)"
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:  # numpy's readers: bad header, object data, file too short
        raise _fail(path, f"not a readable numpy array ({type(err).__name__}: {err})", fix) from err
    if not isinstance(array, np.ndarray):  # an .npz archive under an .npy name
        raise _fail(path, f"holds a {type(array).__name__}, not one array", fix)
    if array.dtype.kind not in "fiu":
        kind = "complex numbers" if array.dtype.kind == "c" else f"dtype {array.dtype}"
        raise _fail(path, f"holds {kind}, not real numbers", f"save {what} as real numbers (float32)")
    return array


def _read_rois(path: Path, n_voxels: int) -> np.ndarray:
    """ROI label per voxel [n_voxels] ('' = none) from rois.csv; rows are numbered as lines of the file."""
    table = _read_csv(path, str, "columns `voxel` (int) and `roi` (str), one row per voxel")
    if not {"voxel", "roi"} <= set(table.columns):
        raise _fail(path, f"columns are {list(table.columns)}", "use columns `voxel` (int) and `roi` (str)")
    line = np.arange(len(table)) + 2  # line 1 is the header
    voxel = pd.to_numeric(table["voxel"], errors="coerce").to_numpy(dtype=np.float64)
    whole = np.isfinite(voxel) & (voxel == np.round(voxel))
    if not whole.all():
        i = int(np.flatnonzero(~whole)[0])
        raise _fail(
            path,
            f"line {line[i]}: field `voxel` is {table['voxel'].iloc[i]!r}, not an integer ({int((~whole).sum())} such row(s))",
            "give each voxel as a whole-number column index of responses.npy",
        )
    outside = (voxel < 0) | (voxel >= n_voxels)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise _fail(
            path,
            f"line {line[i]}: field `voxel` is {int(voxel[i])}, outside [0, {n_voxels}) ({int(outside.sum())} such row(s))",
            f"index voxels as columns 0..{n_voxels - 1} of responses.npy",
        )
    voxel = voxel.astype(np.int64)
    repeated = pd.Series(voxel).duplicated(keep=False).to_numpy()
    if repeated.any():
        first = voxel[np.flatnonzero(repeated)[0]]
        lines = line[voxel == first].tolist()
        raise _fail(
            path,
            f"voxel {first} has {len(lines)} rows (lines {lines}); {len(np.unique(voxel[repeated]))} voxel(s) are repeated",
            "keep one row per voxel (one ROI label each); a voxel in no ROI may be left out",
        )
    labels = np.full(n_voxels, "", dtype=object)
    labels[voxel] = table["roi"].to_numpy()
    return labels


def _plan_subject(sub_dir: Path, image_files: set[str], seed: int) -> dict:
    """Read and check one subject's small files (responses stay memory-mapped)."""
    responses = _load_npy(sub_dir / "responses.npy", "the responses [n_trials, n_voxels]", mmap=True)
    if responses.ndim != 2:
        raise _fail(sub_dir / "responses.npy", f"shape {responses.shape}", "save a 2-D array [n_trials, n_voxels]")
    n_trials, n_voxels = responses.shape
    trials = _read_trials(sub_dir / "trials.csv", n_trials, image_files)
    coords = _load_npy(sub_dir / "coords.npy", f"float32 [{n_voxels}, 3] voxel coordinates")
    if coords.shape != (n_voxels, 3):
        raise _fail(
            sub_dir / "coords.npy",
            f"shape {coords.shape} but responses.npy has {n_voxels} voxels",
            f"save coordinates as [{n_voxels}, 3]",
        )
    if not np.isfinite(coords).all():
        rows = np.flatnonzero(~np.isfinite(coords).all(1))
        raise _fail(
            sub_dir / "coords.npy",
            f"non-finite coordinates for {rows.size} voxel(s), e.g. {rows[:5].tolist()}",
            "give every voxel finite coordinates",
        )
    rois = _read_rois(sub_dir / "rois.csv", n_voxels) if (sub_dir / "rois.csv").is_file() else None
    nc = None
    nc_path = sub_dir / "noise_ceiling.npy"
    if nc_path.is_file():
        nc = _load_npy(nc_path, "the noise ceiling [n_voxels] in percent (0-100)")
        if nc.shape != (n_voxels,):
            raise _fail(nc_path, f"shape {nc.shape}", f"save [{n_voxels}] values in percent (0-100)")
        check_percent(nc, str(nc_path))
    # the split is by image: any stable numbering of the image names gives the same split
    names = sorted(set(trials["image"]))
    local = {name: i for i, name in enumerate(names)}
    split = _trial_split(sub_dir / "trials.csv", trials, trials["image"].map(local).to_numpy(), seed)
    return {
        "dir": sub_dir,
        "responses": responses,
        "trials": trials,
        "split": split,
        "coords": coords,
        "rois": rois,
        "nc": nc,
    }


def _open(root: Path, options: Mapping[str, Any] | None) -> tuple[dict, dict, Path, list[dict]]:
    """(options, dataset.yaml, images folder, one plan per subject): every subject's small files read and checked
    (responses memory-mapped), so that a mistake is reported before minutes of work."""
    opts = _read_options(options, root)
    meta = read_dataset_yaml(root)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise _fail(images_dir, "missing", "put the stimulus images in images/")
    subjects = find_subjects(root)
    image_files = {p.name for p in images_dir.iterdir() if p.is_file()}
    return opts, meta, images_dir, [_plan_subject(sub_dir, image_files, opts["seed"]) for sub_dir in subjects]


def _subject_name(root: Path, sub_dir: Path) -> str:
    """The store's name of a subject folder: its path below the root, ``/`` replaced by ``_``."""
    return str(sub_dir.relative_to(root)).replace("/", "_")


def prepare(root: str | Path, out: str | Path, *, image_size: int, options: dict | None = None) -> dict:
    """Read a folder dataset and write its prepared store to ``out``; returns a report per subject."""
    root = Path(root)
    opts, meta, images_dir, plans = _open(root, options)
    used = sorted({name for plan in plans for name in plan["trials"]["image"]})
    index = {name: i for i, name in enumerate(used)}

    report: dict = {"dataset": meta["name"], "modality": meta["modality"], "n_images": len(used), "subjects": {}}
    with StoreWriter(
        out, name=meta["name"], modality=meta["modality"], source=f"folder:{root.resolve()}", image_size=image_size
    ) as writer:
        writer.write_images(
            (
                load_image(images_dir / n)
                for n in tqdm(used, desc=f"{meta['name']}: images", file=sys.stderr, disable=None)
            ),
            used,
        )
        # Big brain: subjects are spooled and concatenated into one subject when the block closes.
        big = BigBrain(writer) if opts["bigbrain"] else contextlib.nullcontext()
        with big:
            for plan in plans:
                sub_dir, responses, split = plan["dir"], plan["responses"], plan["split"]
                subject = _subject_name(root, sub_dir)
                trial_image = plan["trials"]["image"].map(index).to_numpy()
                # the store reports masked voxels and inf values on stderr (the prepare log), naming this file
                if opts["bigbrain"]:
                    sw = big.subject(subject, responses.shape[1])
                else:
                    sw = writer.subject(subject, responses.shape[1], source=str(sub_dir / "responses.npy"))
                for start in range(0, responses.shape[0], 1024):
                    stop = start + 1024
                    sw.append(responses[start:stop], trial_image[start:stop], split[start:stop])
                rois = plan["rois"]
                report["subjects"][subject] = sw.finish(
                    plan["coords"], rois={"roi": rois} if rois is not None else None, noise_ceiling=plan["nc"]
                )
        if opts["bigbrain"]:
            report["subjects"] = big.reports  # the one concatenated subject
    return report


def check(root: Path, options: Mapping[str, Any], *, read_data: bool = True) -> list[CheckRow]:
    """One row per subject folder, through the checks :func:`prepare` runs first; nothing written."""
    _, _, _, plans = _open(root, options)
    rows = []
    for plan in plans:
        responses = plan["responses"]  # memory-mapped [n_trials, n_voxels]
        nan = None
        if read_data:
            chunks = (np.asarray(responses[i : i + 1024]) for i in range(0, responses.shape[0], 1024))
            nan = nan_columns(chunks, responses.shape[1])
        subject = _subject_name(root, plan["dir"])
        rows.append(
            check_row("folder", subject, plan["split"], plan["trials"]["image"].nunique(), responses.shape[1], nan)
        )
    return rows


# The terms of use the data carry (docs/sharing.md gives the source); a model card repeats them.
TERMS = "the folder dataset's own: its dataset.yaml `terms:` (not stated when it has none)"

FORMAT = DatasetAdapter(
    name="folder", defaults=DEFAULTS, prepare=prepare, check=check, visual_angle=visual_angle_of, terms=TERMS
)
