"""THINGS-EEG2 (Gifford et al. 2022): 10 subjects, 17 posterior EEG channels, preprocessed data.

Files read under ``root``::

    preprocessed_data/sub-XX/preprocessed_eeg_training.npy   dict: preprocessed_eeg_data (16540 images, 4 reps,
                                                             17 channels, 100 times), ch_names, times (100 Hz,
                                                             -0.2 to 0.8 s)
    preprocessed_data/sub-XX/preprocessed_eeg_test.npy       the same with (200 images, 80 reps, 17, 100)
    image_set/image_metadata.npy                             dict: train_img_files, train_img_concepts,
                                                             test_img_files, test_img_concepts
    image_set/training_images/<concept>/<file>, image_set/test_images/<concept>/<file>

The data files exist in two variants, both read: ``np.save`` of a dict (a 0-d object array,
``np.load(allow_pickle=True).item()``) and a plain ``pickle.dump`` of the dict (some re-releases). Both are
pickles: unpickling can run code, so they are opened only from the folder the user names as ``root`` (or
``data_dir``); name only files you trust.

A voxel is one channel x one time point (paper: N_EEG = C x T; 17 x 100 = 1700 per subject, 17K for the ten).
The window [tmin, tmax] and ``decim`` (bins of samples averaged) are options; by default all 100 samples are
kept. Voxel index = channel * n_times + time. Coordinates: x, y = the channel's position in the standard
10-20 montage (mne ``standard_1020``; its new name ``colin27_1020`` in recent mne), in mm, flattened by an
azimuthal-equidistant projection; z = time x ``time_mm_per_s`` (100 mm/s: 10 ms = 1 mm) so neighbouring time
points are neighbours. (The paper used dummy sequential numbers; real positions keep the scalp layout.)

Trials: every (image, repetition) of the training and test files; image i of the training data is the i-th
entry of train_img_files (the release sorts the data by image condition). Split: the 200 test images (80
repeats) are the test set; the 16540 training images are split train/val by image. Noise ceiling: from repeats.

[unverified] the folder names ``preprocessed_data`` and ``image_set`` (the OSF release's); options ``data_dir``
and ``image_dir`` point elsewhere, and ``sub-XX`` folders directly under root are found too.

Big brain (``bigbrain: true``): all subjects saw the same images: concatenated into one subject.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afo.data.adapter import CheckRow, DatasetAdapter, check_row
from afo.data.bigbrain import subject_target
from afo.data.files import (
    DatasetFileNotFoundError,
    DatasetFormatError,
    find_first,
    format_error,
    load_trusted_pickle,
    reading,
)
from afo.data.media import lazy_images
from afo.data.options import AdapterOptionError, as_list, parse_subject_number, progress, resolve_options
from afo.data.overlap import things_source
from afo.data.responses import SENSOR_OPTIONS, apply_window, sensor_time_coords, time_window
from afo.data.splits import split_images
from afo.data.store import StoreWriter

ADAPTER = "things_eeg2"
PARTS = ("training", "test")
CHUNK_IMAGES = 512

DEFAULTS: dict[str, Any] = {
    **SENSOR_OPTIONS,
    "name": "things_eeg2",
    "data_dir": None,
    "image_dir": None,
    "montage": "standard_1020",
}

LAYOUT = (
    "<root>/preprocessed_data/sub-XX/preprocessed_eeg_{training,test}.npy, <root>/image_set/image_metadata.npy, "
    "<root>/image_set/{training_images,test_images}/<concept>/<file>"
)
DATA_EXPECTED = "a dict with preprocessed_eeg_data [images, reps, channels, times], ch_names and times"
METADATA_KEYS = ("train_img_files", "train_img_concepts", "test_img_files", "test_img_concepts")


def load_dict_file(path: Path, what: str, expected: str) -> dict:
    """A dict saved with np.save (0-d object array) or pickle.dump: both variants of the release."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        with reading(path, what, expected):
            obj = np.load(path, allow_pickle=True)  # the user named this folder: see the module docstring
        if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
            obj = obj.item()
    else:
        obj = load_trusted_pickle(path, what, expected)
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: {what} holds a {type(obj).__name__}, expected {expected}")
    return obj


def _data_dir(root: Path, opts: dict) -> Path:
    if opts["data_dir"]:
        return Path(opts["data_dir"])
    return root / "preprocessed_data" if (root / "preprocessed_data").is_dir() else root


def _image_dir(root: Path, opts: dict) -> Path:
    if opts["image_dir"]:
        return Path(opts["image_dir"])
    return root / "image_set" if (root / "image_set").is_dir() else root


def load_metadata(image_dir: Path) -> dict[str, list[str]]:
    path = find_first([image_dir / "image_metadata.npy"])
    if path is None:
        raise DatasetFileNotFoundError(
            f"{image_dir / 'image_metadata.npy'}: image metadata not found "
            f"(option image_dir). Expected layout: {LAYOUT}"
        )
    meta = load_dict_file(path, "image metadata", f"a dict with {list(METADATA_KEYS)}")
    for key in METADATA_KEYS:
        if key not in meta:
            raise format_error(path, key, "is missing", f"keys {list(METADATA_KEYS)}")
    out = {k: [str(x) for x in meta[k]] for k in METADATA_KEYS}
    for part in ("train", "test"):
        if len(out[f"{part}_img_files"]) != len(out[f"{part}_img_concepts"]):
            raise format_error(path, f"{part}_img_files", "and its concepts differ in length", "one concept per file")
    return out


def montage_positions(names: list[str], montage: str, source: Path) -> np.ndarray:
    """Positions [n, 3] in mm of the channels in an mne built-in montage."""
    import mne

    builtin = mne.channels.get_builtin_montages()
    if montage == "standard_1020" and "colin27_1020" in builtin:
        montage = "colin27_1020"  # same positions; the old name is deprecated in mne >= 1.13
    if montage not in builtin:
        raise AdapterOptionError(f"{ADAPTER}: montage {montage!r} is not an mne built-in montage ({builtin[:8]} ...)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        positions = mne.channels.make_standard_montage(montage).get_positions()["ch_pos"]
    lookup = {k.lower(): v for k, v in positions.items()}
    missing = [n for n in names if n.lower() not in lookup]
    if missing:
        raise format_error(
            source,
            "ch_names",
            f"has channels {missing} that montage {montage} lacks",
            "10-20 channel names (or set option montage)",
        )
    return np.asarray([lookup[n.lower()] for n in names], dtype=np.float64) * 1000.0


class Subject:
    def __init__(self, data_dir: Path, number: int, opts: dict):
        self.number, self.name, self.opts = number, f"sub-{number:02d}", opts
        folder = data_dir / self.name
        self.paths = {}
        for part in PARTS:
            path = folder / f"preprocessed_eeg_{part}.npy"
            if not path.is_file():
                raise DatasetFileNotFoundError(f"{path}: preprocessed EEG not found. Expected layout: {LAYOUT}")
            self.paths[part] = path

    def load(self, part: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(data [images, reps, channels, times], ch_names, times) of the training or test file."""
        path = self.paths[part]
        d = load_dict_file(path, f"preprocessed EEG ({part})", DATA_EXPECTED)
        for key in ("preprocessed_eeg_data", "ch_names", "times"):
            if key not in d:
                raise format_error(path, key, "is missing", DATA_EXPECTED)
        data = np.asarray(d["preprocessed_eeg_data"])
        names, times = [str(c) for c in d["ch_names"]], np.asarray(d["times"], dtype=np.float64).ravel()
        if data.ndim != 4 or data.shape[2] != len(names) or data.shape[3] != len(times):
            raise format_error(
                path,
                "preprocessed_eeg_data",
                f"has shape {data.shape}",
                f"[images, reps, {len(names)} channels (ch_names), {len(times)} times (times)]",
            )
        return data, names, times


@dataclass
class Opened:
    """Everything read before the EEG files: the subjects (files found), the images in store order (training
    images first, as image_metadata.npy lists them, then the test images) and the split of each image."""

    opts: dict
    subjects: list[Subject]
    image_dir: Path
    names: list[str]  # training_images/<concept>/<file> ..., test_images/<concept>/<file> ...
    n_train_img: int
    split: np.ndarray  # int8 [n_images] split code


def open_dataset(root: str | Path, options: Mapping[str, Any] | None) -> Opened:
    """Find THINGS-EEG2's subjects and images and check them as :func:`prepare` will, without reading EEG."""
    root = Path(root)
    opts = resolve_options(ADAPTER, options, DEFAULTS)
    data_dir, image_dir = _data_dir(root, opts), _image_dir(root, opts)
    if opts["subjects"] is None:
        numbers = sorted(int(p.name[4:]) for p in data_dir.glob("sub-[0-9][0-9]") if p.is_dir())
        if not numbers:
            raise DatasetFileNotFoundError(f"{data_dir}: no sub-XX folders. Expected layout: {LAYOUT}")
    else:
        numbers = [parse_subject_number(s, "sub-01 or 1", ADAPTER) for s in as_list(opts["subjects"])]
    subjects = [Subject(data_dir, n, opts) for n in numbers]

    meta = load_metadata(image_dir)
    names = [f"training_images/{c}/{f}" for c, f in zip(meta["train_img_concepts"], meta["train_img_files"])]
    names += [f"test_images/{c}/{f}" for c, f in zip(meta["test_img_concepts"], meta["test_img_files"])]
    n_train_img = len(meta["train_img_files"])
    missing = [n for n in names if not (image_dir / n).is_file()]
    if missing:
        raise DatasetFileNotFoundError(
            f"{image_dir}: {len(missing)} image(s) listed in image_metadata.npy are "
            f"missing, e.g. {missing[:3]}. Expected layout: {LAYOUT}"
        )
    split_of = split_images(range(len(names)), range(n_train_img, len(names)), opts["val_fraction"], opts["seed"])
    split = np.asarray([split_of[i] for i in range(len(names))], dtype=np.int8)
    return Opened(opts, subjects, image_dir, names, n_train_img, split)


def prepare(root, out, *, image_size: int, options: dict) -> dict:
    """Prepare THINGS-EEG2 under ``root`` into the store ``out``."""
    ds = open_dataset(root, options)
    opts, names, image_dir = ds.opts, ds.names, ds.image_dir
    report: dict[str, Any] = {"dataset": ADAPTER, "n_images": len(names)}
    with StoreWriter(out, name=opts["name"], modality="eeg", source=ADAPTER, image_size=image_size) as writer:
        writer.write_images(
            lazy_images([image_dir / n for n in names], "things_eeg2 images"), names, [things_source(n) for n in names]
        )
        with subject_target(writer, bool(opts["bigbrain"]), name=opts["name"]) as target:
            for subj in progress(ds.subjects, "things_eeg2 subjects", unit="subject"):
                _write_subject(target, subj, opts, ds.n_train_img, len(names), ds.split)
        report["subjects"] = target.reports
    return report


def _parts(
    subj: Subject, opts: dict, n_train_img: int, n_images: int
) -> Iterator[tuple[int, np.ndarray, list[str], np.ndarray, np.ndarray]]:
    """(first image, data [images, reps, channels, times], channel names, times [n_times], time bins [n_bins, k])
    of the training file, then of the test file, checked against image_metadata.npy and each other; one whole
    file in memory at a time (the release is a single pickle per part)."""
    first: tuple[list[str], np.ndarray] | None = None
    for part, first_image in (("training", 0), ("test", n_train_img)):
        data, names, times = subj.load(part)
        expected_images = n_train_img if part == "training" else n_images - n_train_img
        if data.shape[0] != expected_images:
            raise format_error(
                subj.paths[part],
                "preprocessed_eeg_data",
                f"has {data.shape[0]} images",
                f"{expected_images}, one per {part[:5]} entry of image_metadata.npy",
            )
        bins = time_window(times, opts["tmin"], opts["tmax"], opts["decim"], ADAPTER)
        if first is None:
            first = (names, times)
        elif names != first[0] or not np.allclose(times, first[1]):
            raise format_error(
                subj.paths[part],
                "ch_names/times",
                "differ from the training file",
                "the same channels and time points in both files",
            )
        yield first_image, data, names, times, bins
        del data


def _write_subject(target, subj: Subject, opts: dict, n_train_img: int, n_images: int, split: np.ndarray) -> None:
    w, layout = None, None
    for first_image, data, names, times, bins in _parts(subj, opts, n_train_img, n_images):
        if layout is None:
            layout = (names, times, bins)
            w = target.subject(subj.name, len(names) * bins.shape[0])
        n_img, n_rep = data.shape[:2]
        for start in range(0, n_img, CHUNK_IMAGES):
            block = apply_window(data[start : start + CHUNK_IMAGES], bins)  # [img, rep, ch, bins]
            k = block.shape[0]
            images = np.repeat(np.arange(first_image + start, first_image + start + k), n_rep)
            w.append(block.reshape(k * n_rep, -1).astype(np.float32), images, split[images])
        del data
    names, times, bins = layout
    positions = montage_positions(names, opts["montage"], subj.paths["training"])
    n_times = bins.shape[0]
    w.finish(
        sensor_time_coords(positions, times[bins].mean(axis=1), float(opts["time_mm_per_s"])),
        rois={"channel": [c for c in names for _ in range(n_times)]},
        attrs={
            "n_channels": len(names),
            "n_times": n_times,
            "times_s": times[bins].mean(axis=1),
            "voxel_order": "channel-major: voxel = channel * n_times + time",
        },
    )


def check(root: Path, options: Mapping[str, Any], *, read_data: bool = True) -> list[CheckRow]:
    """One row per subject, read as :func:`prepare` reads it (both EEG files are loaded whole either way: a pickle
    shows its shape only when loaded; ``read_data`` adds the NaN count); nothing written."""
    ds = open_dataset(root, options)
    rows = []
    for subj in ds.subjects:
        codes: list[np.ndarray] = []
        names: list[str] = []
        n_voxels = 0
        nan = None  # [n_voxels] bool: a NaN in some trial of either file
        for first_image, data, names, _, bins in _parts(subj, ds.opts, ds.n_train_img, len(ds.names)):
            n_img, n_rep = data.shape[:2]
            codes.append(ds.split[np.repeat(np.arange(first_image, first_image + n_img), n_rep)])
            n_voxels = len(names) * bins.shape[0]
            if read_data:
                for start in range(0, n_img, CHUNK_IMAGES):
                    block = apply_window(data[start : start + CHUNK_IMAGES], bins).reshape(-1, n_voxels)
                    hit = np.isnan(block).any(axis=0)
                    nan = hit if nan is None else nan | hit
            del data
        montage_positions(names, ds.opts["montage"], subj.paths["training"])
        n_nan = int(nan.sum()) if nan is not None else None
        rows.append(check_row(ADAPTER, subj.name, np.concatenate(codes), len(ds.names), n_voxels, n_nan))
    return rows


# The terms of use the data carry (docs/sharing.md gives the source); a model card repeats them.
TERMS = "THINGS-EEG2 (Gifford et al. 2022): the licence stated on its OSF project (osf.io/3jk45); cite the paper; stimuli: THINGS object images, for academic non-commercial research only (THINGS database, osf.io/jum2f)"

FORMAT = DatasetAdapter(name=ADAPTER, defaults=DEFAULTS, prepare=prepare, check=check, terms=TERMS)
