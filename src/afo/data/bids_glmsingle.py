"""A lab's own experiment as it is kept: BIDS task events and GLMsingle single-trial betas, read directly.

Files read (sources in brackets, cited in docs/datasets.md: [B] the BIDS specification, task-events section and
its column definitions; [GP] GLMsingle's Python code, glmsingle/glmsingle.py; [GM] its MATLAB code,
matlab/GLMestimatesingletrial.m)::

    <root>/stimuli/<stim_file>                                the images; stim_file is relative to stimuli/ [B]
    <root>/sub-<s>/[ses-<x>/]func/sub-<s>[_ses-<x>]_task-<t>[_...][_run-<n>]_events.tsv
                                                              onset, duration (s) required; stim_file optional [B]
    <glmsingle_dir>/TYPE{B,C,D}_*.npy                         np.save of a dict: a pickle; betas under
                                                              ``betasmd`` [GP]
                 or TYPE{B,C,D}_*.hdf5                        Python with wanthdf5: h5py dataset ``betasmd`` [GP]
                 or TYPE{B,C,D}_*.mat                         MATLAB ``save -v7.3`` (HDF5): ``modelmd`` [GM],
                                                              dimensions reversed when read by h5py
    <glmsingle_dir>/DESIGNINFO.npy | DESIGNINFO.mat           optional: ``stimorder``, the condition of each trial
                                                              (0-based [GP], 1-based [GM]); ``numtrialrun``

Betas are X x Y x Z x trials (volumes) or vertices x 1 x 1 x trials (surfaces: both codes reshape 2-D data
so [GP, GM]), trials in chronological order across the runs GLMsingle was given [GP, GM: stimorder], in percent
signal change by default [GP, GM: wantpercentbold]. TYPEA_ONOFF holds one on-off beta per voxel, not single
trials [GP], so it is not a model choice here.

Trials are the events rows with a ``stim_file`` (rows without one, or with ``n/a``, are fixations, responses,
...), sorted by onset within each run, runs in ``run-`` order (sessions in label order); trial i of that list is
trial i of the betas. With the design info, trials that share a condition in ``stimorder`` must show the same
``stim_file`` and distinct conditions distinct files (which is independent of 0- or 1-based numbering), and its
per-run trial counts must be the events'. The store is the folder format's (:mod:`afo.data.folder`): betas as
they are, the folder format's split by image (images shown more than once go to test) and its noise ceiling from
repeats; voxels kept in place and masked when NaN. Volumes add the mask's affine and grid (subject attributes
``affine``, ``volume_shape``), which the folder format cannot express.

Trusted files: ``.npy`` outputs are pickles and are loaded with ``allow_pickle`` only from below the root the
config names (README, "Trusted files"); a ``glmsingle_dir`` outside it holding .npy files is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io

from afo.data.adapter import CheckRow, DatasetAdapter, check_row, nan_columns
from afo.data.files import (
    DatasetFileNotFoundError,
    DatasetFormatError,
    format_error,
    open_h5,
    reading,
    require_file,
)
from afo.data.media import lazy_images
from afo.data.options import AdapterOptionError, as_list, check_choice, progress, resolve_options, warn
from afo.data.splits import split_by_image
from afo.data.store import StoreWriter

ADAPTER = "bids_glmsingle"
MODELS = {
    "typeb": "TYPEB_FITHRF",
    "typec": "TYPEC_FITHRF_GLMDENOISE",
    "typed": "TYPED_FITHRF_GLMDENOISE_RR",
}
DEFAULTS: dict[str, Any] = {
    "name": ADAPTER,
    "task": None,
    "subjects": None,
    "sessions": None,
    "runs": None,
    "glmsingle_dir": "derivatives/GLMsingle/sub-{subject}",
    "model": "typed",
    "mask": None,
    "mesh": None,
    "stimuli_dir": "stimuli",
    "seed": 0,
}
EVENTS_LAYOUT = "<root>/sub-<s>/[ses-<x>/]func/sub-<s>[_ses-<x>]_task-<t>[_...][_run-<n>]_events.tsv (BIDS)"
EVENTS_RE = re.compile(
    r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?_task-(?P<task>[A-Za-z0-9]+)(?P<rest>.*)_events\.tsv$"
)
RUN_RE = re.compile(r"_run-(\d+)")
MISSING = ("", "n/a")  # BIDS writes n/a for a missing value in a TSV cell
CHUNK_TRIALS = 64


def _path(root: Path, template: str, subject: str) -> Path:
    """An option's path: ``{subject}`` replaced by the label (without ``sub-``), relative to the root unless absolute."""
    path = Path(str(template).replace("{subject}", subject))
    return path if path.is_absolute() else root / path


# ---------------------------------------------------------------------------------------------------------------
# Events


@dataclass
class Run:
    """One run's events file and the stimulus of each of its trials, in onset order."""

    session: str  # '' without a session entity
    number: int  # 1 without a run entity (a single run)
    path: Path
    stim_files: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return (f"ses-{self.session} " if self.session else "") + f"run-{self.number}"


def find_runs(root: Path, subject: str, task: str) -> list[Run]:
    """Every events file of ``subject`` and ``task`` below ``root/sub-<subject>``, sorted by session and run."""
    runs: dict[tuple[str, int], Run] = {}
    for path in sorted((root / f"sub-{subject}").glob("**/func/*_events.tsv")):
        m = EVENTS_RE.match(path.name)
        if not m or m["sub"] != subject or m["task"] != task:
            continue
        run = RUN_RE.search(m["rest"])
        key = (m["ses"] or "", int(run.group(1)) if run else 1)
        if key in runs:
            raise DatasetFormatError(
                f"{path}: a second events file for sub-{subject} {key[0] and 'ses-' + key[0]} run-{key[1]} (the "
                f"other: {runs[key].path.name}); expected one events file per run. Fix: move the runs GLMsingle was "
                "not given out of the dataset"
            )
        runs[key] = Run(key[0], key[1], path)
    return [runs[k] for k in sorted(runs)]


def read_events(run: Run, stimuli: Path) -> list[str]:
    """The ``stim_file`` of every trial of a run (rows with a stim_file, sorted by onset); each must exist."""
    path = run.path
    with reading(path, "BIDS events", "a tab-separated table with columns onset, duration (and stim_file)"):
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    for column in ("onset", "duration", "stim_file"):
        if column not in table.columns:
            why = "REQUIRED by BIDS" if column != "stim_file" else "the trials are the rows that name an image"
            raise format_error(
                path, column, f"is missing (columns: {list(table.columns)})", f"a column {column} ({why})"
            )
    onset = pd.to_numeric(table["onset"], errors="coerce").to_numpy(dtype=np.float64)
    is_trial = ~table["stim_file"].str.strip().isin(MISSING).to_numpy()
    bad = np.flatnonzero(is_trial & ~np.isfinite(onset))
    if bad.size:
        raise format_error(
            path, "onset", f"is {table['onset'].iloc[bad[0]]!r} on line {bad[0] + 2}", "a number of seconds per trial"
        )
    rows = np.flatnonzero(is_trial)
    rows = rows[np.argsort(onset[rows], kind="stable")]  # GLMsingle's trials are chronological within a run
    names = [table["stim_file"].iloc[i].strip() for i in rows]
    for i, name in zip(rows, names):
        if not (stimuli / name).is_file():
            raise format_error(
                path,
                "stim_file",
                f"names {name!r} on line {i + 2}, which is not in {stimuli}",
                "a path relative to the dataset's stimuli/ folder (BIDS); add the image or correct the name",
            )
    return names


def pick_runs(runs: list[Run], opts: dict, subject: str) -> list[Run]:
    """The runs GLMsingle was given, in its order: the options' sessions and runs, or every run found (numbered
    1..n in each session: a gap is a missing run, an error)."""
    if opts["sessions"] is not None:
        wanted = [str(s).removeprefix("ses-") for s in as_list(opts["sessions"]) or []]
        order = {s: i for i, s in enumerate(wanted)}
        missing = sorted(set(wanted) - {r.session for r in runs})
        if missing:
            raise DatasetFileNotFoundError(
                f"sub-{subject}: no events of session(s) {missing} (found {sorted({r.session for r in runs})}). "
                f"Expected: {EVENTS_LAYOUT}"
            )
        runs = sorted((r for r in runs if r.session in order), key=lambda r: (order[r.session], r.number))
    if opts["runs"] is not None:
        wanted_runs = [int(str(n).removeprefix("run-")) for n in as_list(opts["runs"]) or []]
        by_number: dict[int, list[Run]] = {}
        for r in runs:
            by_number.setdefault(r.number, []).append(r)
        absent = [n for n in wanted_runs if n not in by_number]
        if absent:
            raise DatasetFileNotFoundError(
                f"{runs[0].path.parent if runs else subject}: no events file of run(s) {absent} for sub-{subject} "
                f"(found runs {sorted(by_number)}). Fix: add the events files, or list in option runs the runs "
                "GLMsingle was given"
            )
        return [r for n in wanted_runs for r in by_number[n]]
    for session in dict.fromkeys(r.session for r in runs):
        numbers = [r.number for r in runs if r.session == session]
        gaps = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
        if gaps:
            where = next(r.path.parent for r in runs if r.session == session)
            raise DatasetFileNotFoundError(
                f"{where}: events of run(s) {gaps} are missing (found runs {numbers}) for sub-{subject}; the betas "
                "hold the trials of every run GLMsingle was given, in order. Fix: add the events files, or list the "
                "runs GLMsingle was given with option runs"
            )
    return runs


# ---------------------------------------------------------------------------------------------------------------
# GLMsingle outputs


@dataclass
class Betas:
    """One GLMsingle output file: its trials read in blocks as [trials, *grid] (grid in X, Y, Z or vertex order)."""

    path: Path
    key: str  # betasmd (Python) or modelmd (MATLAB)
    grid: tuple[int, ...]  # the dimensions before the trial axis, in GLMsingle's (X, Y, Z) order
    n_trials: int
    _array: np.ndarray | None = None  # .npy and MATLAB v5 files: read whole
    _dataset: h5py.Dataset | None = None
    _reversed: bool = False  # MATLAB v7.3: h5py sees (trials, Z, Y, X)

    def block(self, start: int, stop: int) -> np.ndarray:
        """float32 [stop - start, *grid]."""
        with reading(self.path, "GLMsingle betas", "the betas of the chosen model"):
            if self._array is not None:
                data = np.moveaxis(self._array[..., start:stop], -1, 0)
            elif self._reversed:
                assert self._dataset is not None
                data = np.asarray(self._dataset[start:stop])
                data = np.transpose(data, (0, *range(data.ndim - 1, 0, -1)))
            else:
                assert self._dataset is not None
                data = np.moveaxis(np.asarray(self._dataset[..., start:stop]), -1, 0)
        return np.asarray(data, dtype=np.float32)

    def blocks(self, desc: str) -> Iterator[tuple[int, np.ndarray]]:
        for start in progress(range(0, self.n_trials, CHUNK_TRIALS), desc, unit="chunk"):
            yield start, self.block(start, min(start + CHUNK_TRIALS, self.n_trials))


def _numeric(path: Path, key: str, array: Any, expected: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "fiu" or array.ndim < 2:
        raise format_error(path, key, f"has dtype {array.dtype} and shape {array.shape}", expected)
    return array


def load_npy_dict(path: Path, what: str, expected: str) -> dict:
    """A dict saved with ``np.save`` (a pickle: loaded only from the folders the user's config names)."""
    with reading(path, what, expected):
        obj = np.load(path, allow_pickle=True)
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: holds a {type(obj).__name__}, not a dict; expected {expected}")
    return obj


def refuse_pickles_outside(root: Path, folder: Path) -> None:
    """GLMsingle's .npy outputs are pickles (they can run code when loaded): read them only from below the root
    the config names (README, trusted files)."""
    pickles = sorted(folder.glob("*.npy")) if folder.is_dir() else []
    if pickles and not folder.resolve().is_relative_to(root.resolve()):
        raise AdapterOptionError(
            f"{ADAPTER}: option glmsingle_dir {folder} is outside the dataset root {root}, and its .npy outputs "
            f"(e.g. {pickles[0].name}) are pickles, loaded only from below the root the config names. Fix: move "
            "GLMsingle's outputs below the root (e.g. <root>/derivatives/GLMsingle/sub-<label>)"
        )


def find_output(folder: Path, stem: str, what: str) -> Path | None:
    """``folder/stem`` with the one extension GLMsingle wrote (.npy, .hdf5 or .mat); two of them are an error."""
    found = [folder / f"{stem}{ext}" for ext in (".npy", ".hdf5", ".mat") if (folder / f"{stem}{ext}").is_file()]
    if len(found) > 1:
        raise DatasetFormatError(
            f"{folder}: {what} is there as {[p.name for p in found]}; expected one file. Fix: keep the output of the "
            "GLMsingle run the events describe"
        )
    return found[0] if found else None


def open_betas(folder: Path, model: str, subject: str) -> Betas:
    stem = MODELS[model]
    path = find_output(folder, stem, "the betas")
    if path is None:
        present = sorted(p.name for p in folder.glob("TYPE*")) if folder.is_dir() else []
        raise DatasetFileNotFoundError(
            f"{folder / stem}.npy (or .hdf5, .mat): GLMsingle betas of sub-{subject} not found (the folder holds "
            f"{present}). Fix: point option glmsingle_dir at GLMsingle's output folder, or pick the model it wrote "
            f"with option model ({sorted(MODELS)})"
        )
    expected = "X x Y x Z x trials (volumes) or vertices x trials (surfaces)"
    if path.suffix == ".npy":
        results = load_npy_dict(path, "GLMsingle results", "a dict with key 'betasmd' (GLMsingle's Python output)")
        if "betasmd" not in results:
            raise format_error(path, "betasmd", f"is missing (keys: {sorted(results)})", "GLMsingle's Python output")
        array = _numeric(path, "betasmd", results["betasmd"], expected)
        return Betas(path, "betasmd", tuple(array.shape[:-1]), int(array.shape[-1]), _array=array)
    if path.suffix == ".hdf5":
        f = open_h5(path, "GLMsingle results", "GLMsingle's Python output saved with wanthdf5")
        ds = f["betasmd"] if "betasmd" in f else None
        if not isinstance(ds, h5py.Dataset) or ds.ndim < 2:
            raise format_error(path, "betasmd", f"is missing or not an array (keys: {sorted(f)})", expected)
        return Betas(path, "betasmd", tuple(ds.shape[:-1]), int(ds.shape[-1]), _dataset=ds)
    return _open_mat(path)


def _open_mat(path: Path) -> Betas:
    """MATLAB's output: v7.3 (HDF5; h5py reverses MATLAB's dimensions), or an older .mat re-saved by a user."""
    expected = "MATLAB's GLMestimatesingletrial output with variable modelmd (X x Y x Z x trials)"
    if h5py.is_hdf5(path):
        f = open_h5(path, "GLMsingle results", expected)
        ds = f["modelmd"] if "modelmd" in f else None
        if not isinstance(ds, h5py.Dataset) or ds.ndim < 2:
            raise format_error(path, "modelmd", f"is missing or not an array (keys: {sorted(f)})", expected)
        return Betas(path, "modelmd", tuple(ds.shape[1:][::-1]), int(ds.shape[0]), _dataset=ds, _reversed=True)
    with reading(path, "GLMsingle results", expected):
        content = scipy.io.loadmat(path, variable_names=["modelmd"])
    if "modelmd" not in content:
        raise format_error(path, "modelmd", "is missing", expected)
    array = _numeric(path, "modelmd", content["modelmd"], expected)
    return Betas(path, "modelmd", tuple(array.shape[:-1]), int(array.shape[-1]), _array=array)


@dataclass
class Design:
    """What DESIGNINFO says about the trials: the condition of each trial and the trials of each run."""

    path: Path
    stimorder: np.ndarray  # [n_trials] int
    numtrialrun: np.ndarray | None  # [n_runs] int


def _vector(path: Path, key: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.size != max(array.shape, default=0):
        raise format_error(path, key, f"has dtype {array.dtype} and shape {array.shape}", "a vector of trial numbers")
    return array.ravel().astype(np.int64)


def _design_fields(path: Path, expected: str) -> dict[str, Any]:
    """stimorder and numtrialrun (None where absent) of a DESIGNINFO file: a pickled dict, or MATLAB's HDF5."""
    keys = ("stimorder", "numtrialrun")
    if path.suffix == ".npy":
        info = load_npy_dict(path, "GLMsingle design info", expected)
        return {k: info.get(k) for k in keys}
    with open_h5(path, "GLMsingle design info", expected) as f, reading(path, "GLMsingle design info", expected):
        return {k: f[k][()] if k in f and isinstance(f[k], h5py.Dataset) else None for k in keys}


def read_design(folder: Path) -> Design | None:
    path = find_output(folder, "DESIGNINFO", "the design info")
    if path is None:
        return None
    fields = _design_fields(path, "GLMsingle's design info with field stimorder")
    if fields["stimorder"] is None:
        raise format_error(path, "stimorder", "is missing", "GLMsingle's design info with field stimorder")
    runs = fields["numtrialrun"]
    return Design(
        path,
        _vector(path, "stimorder", fields["stimorder"]),
        None if runs is None else _vector(path, "numtrialrun", runs),
    )


def check_design(design: Design, runs: list[Run], subject: str) -> None:
    """The design info against the events: trials per run, and one stim_file per condition (and vice versa)."""
    counts = [len(r.stim_files) for r in runs]
    if design.numtrialrun is not None and design.numtrialrun.tolist() != counts:
        problem = (
            "runs out of order"
            if sorted(design.numtrialrun.tolist()) == sorted(counts)
            else "runs missing or other trial counts"
        )
        raise format_error(
            design.path,
            "numtrialrun",
            f"is {design.numtrialrun.tolist()} trials per run but the events of sub-{subject} "
            f"({', '.join(r.label for r in runs)}) have {counts} ({problem})",
            "the events files of the runs GLMsingle was given, in its order (options sessions and runs)",
        )
    names = [name for r in runs for name in r.stim_files]
    if design.stimorder.size != len(names):
        raise format_error(
            design.path,
            "stimorder",
            f"has {design.stimorder.size} trials but the events of sub-{subject} name {len(names)} stimuli",
            "one trial per events row with a stim_file",
        )
    file_of: dict[int, tuple[str, int]] = {}
    condition_of: dict[str, tuple[int, int]] = {}
    for trial, (condition, name) in enumerate(zip(design.stimorder.tolist(), names)):
        first = file_of.setdefault(condition, (name, trial))
        other = condition_of.setdefault(name, (condition, trial))
        if first[0] != name or other[0] != condition:
            run, row = _locate(runs, trial)
            seen = (
                f"condition {condition} was {first[0]!r} on trial {first[1]}"
                if first[0] != name
                else (f"{name!r} was condition {other[0]} on trial {other[1]}")
            )
            raise format_error(
                design.path,
                "stimorder",
                f"disagrees with {run.path.name}: trial {trial} ({run.label}, trial {row} of the run) is condition "
                f"{condition} showing {name!r}, but {seen}",
                "one stim_file per GLMsingle condition: the events of the runs GLMsingle was given, in its order",
            )


def _locate(runs: list[Run], trial: int) -> tuple[Run, int]:
    for run in runs:
        if trial < len(run.stim_files):
            return run, trial
        trial -= len(run.stim_files)
    raise IndexError(trial)


# ---------------------------------------------------------------------------------------------------------------
# Voxels


def read_mesh(paths: list[Path]) -> np.ndarray:
    """Vertex coordinates [n, 3] of GIFTI surfaces, FreeSurfer surfaces or .npy arrays, concatenated in order."""
    parts = []
    for path in paths:
        require_file(path, "surface mesh", "a GIFTI surface (.surf.gii), a FreeSurfer surface or a .npy [n, 3]")
        with reading(path, "surface mesh", "a GIFTI surface, a FreeSurfer surface (lh.white) or .npy [n, 3]"):
            if path.suffix == ".npy":
                coords = np.load(path, allow_pickle=False)
            elif path.name.endswith(".gii"):
                img: Any = nib.load(path)
                points = [d.data for d in img.darrays if d.intent == nib.nifti1.intent_codes["NIFTI_INTENT_POINTSET"]]
                if not points:
                    raise format_error(path, "darrays", "hold no NIFTI_INTENT_POINTSET array", "a GIFTI surface")
                coords = points[0]
            else:
                coords = nib.freesurfer.read_geometry(str(path))[0]
        coords = np.asarray(coords, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise format_error(path, "vertices", f"have shape {coords.shape}", "[n_vertices, 3] coordinates")
        parts.append(coords)
    return np.concatenate(parts)


@dataclass
class Voxels:
    """The kept voxels: flat indices into the betas grid, their coordinates and (volumes) the grid's geometry."""

    flat: np.ndarray
    coords: np.ndarray
    attrs: dict


def select_voxels(root: Path, betas: Betas, opts: dict, subject: str) -> Voxels:
    if opts["mesh"] is not None:
        return _surface_voxels(root, betas, opts, subject)
    if len(betas.grid) != 3 or betas.grid[1:] == (1, 1):  # GLMsingle writes surface betas as vertices x 1 x 1
        raise format_error(
            betas.path,
            betas.key,
            f"has shape {betas.grid} x {betas.n_trials} trials",
            "X x Y x Z x trials; for surface betas (vertices x trials) name the mesh with option mesh",
        )
    if opts["mask"] is None:
        finite = _finite_any(betas, subject).reshape(betas.grid)
        warn(
            f"{ADAPTER} sub-{subject}: no option mask, so every voxel with a finite beta is kept and coordinates are "
            "voxel indices (i, j, k); name a brain or ROI mask NIfTI on the betas grid to get millimetres"
        )
        ijk = np.argwhere(finite)
        return Voxels(np.ravel_multi_index(tuple(ijk.T), betas.grid), ijk.astype(np.float32), {})
    path = require_file(_path(root, opts["mask"], subject), "mask", "a brain or ROI mask NIfTI on the betas grid")
    with reading(path, "mask", "a 3-D NIfTI on the betas grid"):
        img: Any = nib.load(path)
        mask = np.asarray(img.dataobj)
    if mask.shape[:3] != betas.grid or (mask.ndim > 3 and int(np.prod(mask.shape[3:])) != 1):
        raise format_error(
            path,
            "shape",
            f"is {mask.shape}, another grid than the betas' {betas.grid} in {betas.path.name}",
            "a mask on the grid GLMsingle was run on (e.g. the fMRIPrep space of the BOLD runs)",
        )
    ijk = np.argwhere(mask.reshape(betas.grid) > 0)
    affine = np.asarray(img.affine, dtype=np.float64)
    attrs = {"affine": affine.ravel(), "volume_shape": np.asarray(betas.grid, dtype=np.int64)}
    return Voxels(np.ravel_multi_index(tuple(ijk.T), betas.grid), nib.affines.apply_affine(affine, ijk), attrs)


def _surface_voxels(root: Path, betas: Betas, opts: dict, subject: str) -> Voxels:
    """Surface betas: vertices x (1 x 1 x) trials; the mesh (hemispheres concatenated in GLMsingle's order)."""
    n_vertices = int(np.prod(betas.grid))
    if any(n != 1 for n in betas.grid[1:]):
        raise format_error(
            betas.path, betas.key, f"has shape {betas.grid} x trials", "vertices x trials (option mesh names a surface)"
        )
    if opts["mask"] is not None:
        raise AdapterOptionError(f"{ADAPTER}: option mask is a volume mask; surface data keep every finite vertex")
    paths = [_path(root, p, subject) for p in as_list(opts["mesh"]) or []]
    coords = read_mesh(paths)
    if len(coords) != n_vertices:
        raise format_error(
            paths[0],
            "vertices",
            f"number {len(coords)} in {[p.name for p in paths]} but {betas.path.name} has {n_vertices}",
            "the surface(s) GLMsingle's data were sampled on, hemispheres in the order of the betas",
        )
    flat = np.flatnonzero(_finite_any(betas, subject))
    return Voxels(flat, coords[flat], {})


def _finite_any(betas: Betas, subject: str) -> np.ndarray:
    """Grid positions [prod(grid)] with a finite beta on some trial (GLMsingle leaves NaN outside the data)."""
    finite = np.zeros(int(np.prod(betas.grid)), dtype=bool)
    for _, block in betas.blocks(f"{ADAPTER} sub-{subject} finite voxels"):
        finite |= np.isfinite(block.reshape(len(block), -1)).any(axis=0)
    return finite


# ---------------------------------------------------------------------------------------------------------------
# Dataset


@dataclass
class Subject:
    label: str
    runs: list[Run]
    betas: Betas
    voxels: Voxels
    names: list[str]  # stim_file of every trial
    split: np.ndarray  # split code of every trial

    @property
    def name(self) -> str:
        return f"sub-{self.label}"

    def responses(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first trial, betas [trials, kept voxels]) in blocks of trials."""
        for start, block in self.betas.blocks(f"{ADAPTER} {self.name} betas"):
            yield start, block.reshape(len(block), -1)[:, self.voxels.flat]


@dataclass
class Opened:
    opts: dict
    stimuli: Path
    subjects: list[Subject]
    images: list[str]  # store order: every stim_file shown, sorted


def _options(options: Mapping[str, Any] | None) -> dict:
    opts = resolve_options(ADAPTER, options, DEFAULTS)
    if str(opts["model"]).lower() == "typea":
        raise AdapterOptionError(
            f"{ADAPTER}: option model=typea: TYPEA_ONOFF holds one on-off beta per voxel, not single trials; "
            f"use one of {sorted(MODELS)}"
        )
    opts["model"] = check_choice(ADAPTER, "model", str(opts["model"]).lower(), sorted(MODELS))
    if isinstance(opts["seed"], bool) or not isinstance(opts["seed"], int):
        raise AdapterOptionError(f"{ADAPTER}: option seed must be an integer, got {opts['seed']!r}")
    return opts


def _task(root: Path, opts: dict, subjects: list[str]) -> str:
    """The option task, or the one task of the events files."""
    if opts["task"] is not None:
        return str(opts["task"]).removeprefix("task-")
    tasks = sorted(
        {
            m["task"]
            for s in subjects
            for p in (root / f"sub-{s}").glob("**/func/*_events.tsv")
            if (m := EVENTS_RE.match(p.name))
        }
    )
    if len(tasks) != 1:
        raise AdapterOptionError(
            f"{ADAPTER} {root}: the events files hold tasks {tasks}; name the task GLMsingle was run on with option task"
        )
    return tasks[0]


def open_subject(root: Path, label: str, task: str, stimuli: Path, opts: dict) -> Subject:
    runs = pick_runs(find_runs(root, label, task), opts, label)
    if not runs:
        raise DatasetFileNotFoundError(
            f"{root / f'sub-{label}'}: no events of task {task!r}. Expected: {EVENTS_LAYOUT}"
        )
    for run in runs:
        run.stim_files = read_events(run, stimuli)
    folder = _path(root, opts["glmsingle_dir"], label)
    refuse_pickles_outside(root, folder)
    betas = open_betas(folder, opts["model"], label)
    names = [name for run in runs for name in run.stim_files]
    if betas.n_trials != len(names):
        per_run = ", ".join(f"{r.label}: {len(r.stim_files)}" for r in runs)
        raise format_error(
            betas.path,
            betas.key,
            f"has {betas.n_trials} trials but the events of sub-{label} name {len(names)} stimuli ({per_run})",
            "one beta per events row with a stim_file, over the runs GLMsingle was given (options sessions, runs)",
        )
    design = read_design(folder)
    if design is not None:
        check_design(design, runs, label)
    voxels = select_voxels(root, betas, opts, label)
    # the folder format's split: by image, numbered in name order, images shown more than once to test
    local = {name: i for i, name in enumerate(sorted(set(names)))}
    split = split_by_image(np.array([local[n] for n in names]), seed=opts["seed"])
    return Subject(label, runs, betas, voxels, names, split)


def open_dataset(root: str | Path, options: Mapping[str, Any] | None) -> Opened:
    """Read every subject's events, GLMsingle output headers, design info and voxels, as :func:`prepare` will."""
    root = Path(root)
    opts = _options(options)
    if opts["subjects"] is None:
        labels = sorted(p.name.removeprefix("sub-") for p in root.glob("sub-*") if p.is_dir())
    else:
        labels = [str(s).removeprefix("sub-") for s in as_list(opts["subjects"]) or []]
    if not labels:
        raise DatasetFileNotFoundError(f"{root}: no sub-<label> folder. Expected: {EVENTS_LAYOUT}")
    stimuli = _path(root, opts["stimuli_dir"], "")
    if not stimuli.is_dir():
        raise DatasetFileNotFoundError(
            f"{stimuli}: stimulus folder not found (BIDS: <root>/stimuli; option stimuli_dir)"
        )
    task = _task(root, opts, labels)
    subjects = [open_subject(root, label, task, stimuli, opts) for label in labels]
    images = sorted({n for s in subjects for n in s.names})
    return Opened(opts, stimuli, subjects, images)


def prepare(root: str | Path, out: str | Path, *, image_size: int, options: dict | None = None) -> dict:
    """Prepare a BIDS + GLMsingle dataset under ``root`` into the store ``out``."""
    root = Path(root)
    ds = open_dataset(root, options)
    row_of = {name: i for i, name in enumerate(ds.images)}
    report: dict[str, Any] = {"dataset": ds.opts["name"], "n_images": len(ds.images), "subjects": {}}
    with StoreWriter(
        out, name=ds.opts["name"], modality="fmri", source=f"{ADAPTER}:{root.resolve()}", image_size=image_size
    ) as writer:
        writer.write_images(lazy_images([ds.stimuli / n for n in ds.images], f"{ADAPTER} images"), ds.images)
        for subj in ds.subjects:
            w = writer.subject(subj.name, len(subj.voxels.flat), source=str(subj.betas.path))
            image = np.array([row_of[n] for n in subj.names], dtype=np.int64)
            for start, block in subj.responses():
                stop = start + len(block)
                w.append(block, image[start:stop], subj.split[start:stop])
            result = w.finish(subj.voxels.coords, attrs=subj.voxels.attrs)
            result["runs"] = [r.label for r in subj.runs]
            report["subjects"][subj.name] = result
    return report


def check(root: Path, options: Mapping[str, Any], *, read_data: bool = True) -> list[CheckRow]:
    """One row per subject, opened as :func:`prepare` opens it; nothing written."""
    ds = open_dataset(root, options)
    rows = []
    for subj in ds.subjects:
        n_voxels = len(subj.voxels.flat)
        nan = nan_columns((block for _, block in subj.responses()), n_voxels) if read_data else None
        rows.append(check_row(ADAPTER, subj.name, subj.split, len(set(subj.names)), n_voxels, nan))
    return rows


# The terms of use the data carry (docs/sharing.md gives the source); a model card repeats them.
TERMS = "a lab's own experiment: the terms are the lab's (participants' consent, its data sharing agreement); state them before sharing a model trained on it"

FORMAT = DatasetAdapter(name=ADAPTER, defaults=DEFAULTS, prepare=prepare, check=check, terms=TERMS)
