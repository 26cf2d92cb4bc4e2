"""THINGS-MEG (Hebart et al. 2023): 4 participants, 271-sensor CTF MEG, preprocessed epochs.

Files read under ``root``::

    preprocessed_P{1-4}-epo.fif            mne Epochs (found in <root>, <root>/derivatives/preprocessed or
                                           <root>/preprocessed; option epochs_dir): 271 magnetometers,
                                           0.1-40 Hz, -0.1 to 1.3 s, 200 Hz, baseline z-scored by the release's
                                           preprocessing. epochs.metadata (27,048 rows) has trial_type
                                           ('exp', 'test', 'catch'), session_nr, run_nr, image_path,
                                           things_image_nr, things_category_nr, ...
    <images_dir>/<image_path>              the stimuli (default images_dir: root); a file not found at that
                                           relative path is looked up by file name under images_dir

A voxel is one sensor x one time point (paper: N_MEG = sensors x T). The time axis is the window
[tmin, tmax] (default: the whole epoch) cut into bins of ``decim`` samples that are averaged (default 5: 200 Hz
-> 40 Hz, 57 time points x 271 sensors = 15.4k voxels per participant, about the paper's 60K for four). Voxel
index = sensor * n_times + time. Coordinates: x, y = the sensor position (``info['chs'][i]['loc'][:3]``, m ->
mm) flattened onto a plane by an azimuthal-equidistant projection from the fitted helmet sphere; z = time
x ``time_mm_per_s`` (100 mm/s: 10 ms = 1 mm), so a sensor's neighbouring time points are neighbours along z and
each time slice keeps the helmet layout. ROI sets: ``channel`` (sensor name) and ``sensor_group`` (CTF names
MLO11 -> 'LO': hemisphere L/R/Z and lobe F/C/T/P/O).

Trials: 'exp' and 'test' trials in file order ('catch' trials dropped). Split: the 200 'test' images (12
repeats each) are the test set; the 'exp' images are split train/val by image. Noise ceiling: from the test
repeats. Optional ``zscore: true`` z-scores every voxel within each session (for epochs that were not
z-scored already; data that look like raw tesla trigger a warning). Epochs are read in chunks
(``preload=False``), one session at a time.

[unverified] the exact prefix of image_path in the release's metadata (e.g. 'images_meg/<concept>/<file>'):
resolved relative to images_dir, with a fallback on the file name, so both a full copy of the THINGS image
folders and a flat folder work.

Big brain (``bigbrain: true``): the participants saw the same images: concatenated into one subject.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afo.data.adapter import CheckRow, DatasetAdapter, check_row, nan_columns
from afo.data.bigbrain import subject_target
from afo.data.files import (
    DatasetFileNotFoundError,
    DatasetFormatError,
    find_first,
    format_error,
    means_bad_file,
    raised_inside,
)
from afo.data.media import find_images, lazy_images
from afo.data.options import AdapterOptionError, as_list, parse_subject_number, progress, resolve_options, warn
from afo.data.overlap import things_source
from afo.data.responses import SENSOR_OPTIONS, apply_window, sensor_time_coords, time_window, zscore_rows
from afo.data.splits import split_images
from afo.data.store import StoreWriter

ADAPTER = "things_meg"
KEEP_TYPES = ("exp", "test")
CHUNK_EPOCHS = 256

DEFAULTS: dict[str, Any] = {
    **SENSOR_OPTIONS,
    "name": "things_meg",
    "epochs_dir": None,
    "images_dir": None,
    "decim": 5,
    "channels": None,
    "zscore": False,
}

LAYOUT = "<root>/[derivatives/preprocessed/]preprocessed_P{1-4}-epo.fif and <images_dir>/<image_path>"
METADATA_COLUMNS = ("trial_type", "image_path")


def _read_epochs(path: Path):
    import mne  # heavy import: only this adapter and EEG need it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # mne warns about file-name conventions
            return mne.read_epochs(path, preload=False, verbose="error")
    except Exception as exc:  # mne signals a bad fif with many types (OSError, ValueError, even AttributeError)
        if not (means_bad_file(exc) or raised_inside(exc, ("mne",))):
            raise  # not mne's verdict on the file: a bug, keep the traceback
        raise DatasetFormatError(f"{path}: not an mne epochs file ({type(exc).__name__}: {exc})") from exc


def _epochs_path(root: Path, opts: dict, number: int) -> Path:
    dirs = (
        [Path(opts["epochs_dir"])]
        if opts["epochs_dir"]
        else [root, root / "derivatives" / "preprocessed", root / "preprocessed"]
    )
    name = f"preprocessed_P{number}-epo.fif"
    path = find_first(d / name for d in dirs)
    if path is None:
        raise DatasetFileNotFoundError(
            f"{dirs[0] / name}: epochs not found (looked in {[str(d) for d in dirs]}). Expected layout: {LAYOUT}"
        )
    return path


def _subjects(root: Path, opts: dict) -> list[int]:
    if opts["subjects"] is not None:
        return [parse_subject_number(s, "P1 or 1", ADAPTER) for s in as_list(opts["subjects"])]
    dirs = (
        [Path(opts["epochs_dir"])]
        if opts["epochs_dir"]
        else [root, root / "derivatives" / "preprocessed", root / "preprocessed"]
    )
    found = sorted(
        {int(p.name[len("preprocessed_P") :].split("-")[0]) for d in dirs for p in d.glob("preprocessed_P*-epo.fif")}
    )
    if not found:
        raise DatasetFileNotFoundError(f"{root}: no preprocessed_P*-epo.fif. Expected layout: {LAYOUT}")
    return found


def sensor_groups(names: list[str]) -> list[str]:
    """CTF sensor names 'MLO11-1609' -> 'LO' (hemisphere + lobe); '' for other naming schemes."""
    return [n[1:3] if len(n) >= 3 and n[0] == "M" and n[1] in "LRZ" and n[2] in "FCTPO" else "" for n in names]


class Participant:
    def __init__(self, root: Path, number: int, opts: dict):
        self.number, self.name, self.opts = number, f"P{number}", opts
        self.path = _epochs_path(root, opts, number)
        self.epochs = _read_epochs(self.path)
        md = self.epochs.metadata
        if md is None:
            raise format_error(
                self.path, "metadata", "is missing", "epochs.metadata with trial_type and image_path per epoch"
            )
        missing = [c for c in METADATA_COLUMNS if c not in md.columns]
        if missing:
            raise format_error(
                self.path,
                f"metadata.{missing[0]}",
                "is missing",
                f"metadata columns {list(METADATA_COLUMNS)} (has {list(md.columns)[:10]})",
            )
        types = md["trial_type"].astype(str).to_numpy()
        unknown = sorted(set(types) - {"exp", "test", "catch"})
        if unknown:
            raise format_error(self.path, "metadata.trial_type", f"has values {unknown}", "'exp', 'test', 'catch'")
        self.keep = np.flatnonzero(np.isin(types, KEEP_TYPES))
        self.types = types[self.keep]
        self.image_path = md["image_path"].astype(str).to_numpy()[self.keep]
        self.session = (
            md["session_nr"].to_numpy()[self.keep]
            if "session_nr" in md.columns
            else np.ones(self.keep.size, dtype=np.int64)
        )
        self.picks, self.channel_names = self._picks()
        self.bins = time_window(self.epochs.times, opts["tmin"], opts["tmax"], opts["decim"], ADAPTER)
        self.n_times = self.bins.shape[0]
        self.n_voxels = len(self.picks) * self.n_times

    def _picks(self) -> tuple[np.ndarray, list[str]]:
        import mne

        info = self.epochs.info
        picks = mne.pick_types(info, meg="mag", exclude=[])
        if picks.size == 0:
            picks = mne.pick_types(info, meg=True, eeg=True, exclude=[])
        names = [info["ch_names"][i] for i in picks]
        wanted = as_list(self.opts["channels"])
        if wanted:
            absent = [c for c in wanted if c not in names]
            if absent:
                raise AdapterOptionError(f"{ADAPTER}: channels {absent[:5]} are not MEG channels of {self.path.name}")
            picks = np.asarray([picks[names.index(c)] for c in wanted])
            names = list(wanted)
        if picks.size == 0:
            raise format_error(self.path, "info['chs']", "has no MEG channel", "271 magnetometers")
        return picks, names

    def coords(self) -> np.ndarray:
        locs = np.asarray([self.epochs.info["chs"][i]["loc"][:3] for i in self.picks], dtype=np.float64)
        if not np.isfinite(locs).all() or not np.any(locs):
            raise format_error(
                self.path, "info['chs'][i]['loc']", "has no sensor positions", "sensor positions in metres"
            )
        times = self.epochs.times[self.bins].mean(axis=1)
        return sensor_time_coords(locs * 1000.0, times, float(self.opts["time_mm_per_s"]))

    def rois(self) -> dict[str, list[str]]:
        return {
            "channel": [c for c in self.channel_names for _ in range(self.n_times)],
            "sensor_group": [g for g in sensor_groups(self.channel_names) for _ in range(self.n_times)],
        }

    def sessions(self):
        """(rows into the kept trials, data [n, n_voxels] float32) per session, in file order."""
        order = np.unique(self.session, return_index=True)
        for s in self.session[np.sort(order[1])]:
            rows = np.flatnonzero(self.session == s)
            block = np.empty((rows.size, self.n_voxels), dtype=np.float32)
            for start in range(0, rows.size, CHUNK_EPOCHS):
                part = rows[start : start + CHUNK_EPOCHS]
                data = self.epochs.get_data(picks=self.picks, item=self.keep[part], verbose="error")
                block[start : start + part.size] = apply_window(data, self.bins).reshape(part.size, -1)
            yield rows, block


def _resolve_images(folder: Path, paths: list[str]) -> dict[str, Path]:
    resolved = find_images(folder, {p: p for p in paths})
    missing = [p for p in paths if p not in resolved]
    if missing:
        raise DatasetFileNotFoundError(
            f"{folder}: {len(missing)} image(s) from metadata.image_path not found, "
            f"e.g. {missing[:5]} (option images_dir)"
        )
    return resolved


@dataclass
class Opened:
    """Everything read before the epochs' data: the participants (epochs headers and metadata), the images in
    store order with their files, and the split of each image."""

    opts: dict
    participants: list[Participant]
    names: list[str]  # metadata image_path, sorted: the store's image order
    files: dict[str, Path]  # image_path -> image file
    split_of: dict[str, int]


def open_dataset(root: str | Path, options: Mapping[str, Any] | None) -> Opened:
    """Read THINGS-MEG's epochs headers and metadata and find its images as :func:`prepare` will, without
    reading epochs."""
    root = Path(root)
    opts = resolve_options(ADAPTER, options, DEFAULTS)
    participants = [Participant(root, n, opts) for n in _subjects(root, opts)]
    names = sorted({p for part in participants for p in part.image_path.tolist()})
    files = _resolve_images(Path(opts["images_dir"]) if opts["images_dir"] else root, names)
    test = {p for part in participants for p in part.image_path[part.types == "test"].tolist()}
    return Opened(opts, participants, names, files, split_images(names, test, opts["val_fraction"], opts["seed"]))


def prepare(root, out, *, image_size: int, options: dict) -> dict:
    """Prepare THINGS-MEG under ``root`` into the store ``out``."""
    ds = open_dataset(root, options)
    opts, participants, names, files, split_of = ds.opts, ds.participants, ds.names, ds.files, ds.split_of
    row_of = {n: r for r, n in enumerate(names)}

    report: dict[str, Any] = {
        "dataset": ADAPTER,
        "n_images": len(names),
        "catch_trials_dropped": {p.name: int(len(p.epochs) - p.keep.size) for p in participants},
    }
    with StoreWriter(out, name=opts["name"], modality="meg", source=ADAPTER, image_size=image_size) as writer:
        writer.write_images(
            lazy_images([files[n] for n in names], "things_meg images"), names, [things_source(n) for n in names]
        )
        with subject_target(writer, bool(opts["bigbrain"]), name=opts["name"]) as target:
            for part in participants:
                w = target.subject(part.name, part.n_voxels)
                for rows, block in progress(part.sessions(), f"things_meg {part.name} sessions", unit="session"):
                    if opts["zscore"]:
                        block = zscore_rows(block)
                    elif np.nanmax(np.abs(block), initial=0.0) < 1e-9:
                        warn(f"{part.path}: values below 1e-9 look like raw tesla; set zscore: true")
                    images = part.image_path[rows]
                    w.append(block, [row_of[i] for i in images], [split_of[i] for i in images])
                w.finish(
                    part.coords(),
                    rois=part.rois(),
                    attrs={
                        "n_channels": len(part.picks),
                        "n_times": part.n_times,
                        "times_s": part.epochs.times[part.bins].mean(axis=1),
                        "voxel_order": "channel-major: voxel = channel * n_times + time",
                    },
                )
        report["subjects"] = target.reports
    return report


def check(root: Path, options: Mapping[str, Any], *, read_data: bool = True) -> list[CheckRow]:
    """One row per participant, opened as :func:`prepare` opens it (sessions streamed with ``read_data``);
    nothing written."""
    ds = open_dataset(root, options)
    rows = []
    for part in ds.participants:
        codes = np.array([ds.split_of[p] for p in part.image_path], dtype=np.int64)
        part.coords()  # the sensor positions prepare needs
        nan = nan_columns((block for _, block in part.sessions()), part.n_voxels) if read_data else None
        rows.append(check_row(ADAPTER, part.name, codes, len(set(part.image_path.tolist())), part.n_voxels, nan))
    return rows


# The terms of use the data carry (docs/sharing.md gives the source); a model card repeats them.
TERMS = "THINGS-data (Hebart et al. 2023): CC0 (OpenNeuro ds004212, figshare); stimuli: THINGS object images, for academic non-commercial research only (THINGS database, osf.io/jum2f)"

FORMAT = DatasetAdapter(name=ADAPTER, defaults=DEFAULTS, prepare=prepare, check=check, terms=TERMS)
