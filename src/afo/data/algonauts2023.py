"""Algonauts 2023 (Gifford et al. 2023): NSD on fsaverage, as the challenge released it; 8 subjects, 7T fMRI.

Files read under ``root`` (one folder per subject, as the challenge's data preparation script writes them; facts
and sources in docs/datasets.md)::

    subjNN/training_split/training_fmri/{lh,rh}_training_fmri.npy   float32 [images, challenge vertices], one row
                                                 per image (z-scored per session, averaged over repeats), rows
                                                 in the order of the sorted image file names
    subjNN/training_split/training_images/train-NNNN_nsd-NNNNN.png  NNNN 1-based running index, NNNNN the 0-based
                                                 NSD (73k) image id
    subjNN/test_split/test_images/test-NNNN_nsd-NNNNN.png
    subjNN/test_split/test_fmri/{lh,rh}_test_fmri.npy               optional (not in the participants' release)
    subjNN/test_split/noise_ceiling/{lh,rh}_noise_ceiling.npy       optional, a fraction (0-1) per vertex
    subjNN/roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy       [163842]: challenge vertices = non-zero entries
                                                 in ascending order (values can exceed 1: NSDgeneral + RSC)
    subjNN/roi_masks/{lh,rh}.<class>_challenge_space.npy            integer ROI value per challenge vertex
    subjNN/roi_masks/mapping_<class>.npy                            pickled dict {value: ROI name}
  and, named by the option ``fsaverage_surface``, a folder with ``{lh,rh}.<surface>`` FreeSurfer surfaces of
  fsaverage (the NSD download's nsddata/freesurfer/fsaverage/surf, or a FreeSurfer install's
  subjects/fsaverage/surf): the vertex positions the RetinaMapper reads.

What is written: one store with every subject. Images are deduplicated across subjects by NSD id (the same image
has different train-NNNN names in different subjects) and named ``nsd<id>`` as the NSD adapter names them; with
``stim_info`` (NSD's nsd_stim_info_merged.csv) each also gets its COCO id as source, so the overlap step matches
them with NSD and BOLD5000 by identity, else by pixels. Responses are the release's values as they are (already
z-scored and averaged; one trial per image and subject), left hemisphere's challenge vertices then the right's;
the store's layout records each voxel's hemisphere and fsaverage vertex. ROI labels: one ROI set per class
(``prf-visualrois``, ``floc-faces``...), the mapping's name of each vertex's value ('' for 0).

Split (one per NSD id, shared by all subjects): with test responses in every subject's folder, test = the
release's test images (and the noise ceiling is the release's, in percent); the training images are split
train/val. Without them (the participants' release), ``test_fraction`` of the training images are held out as
test and ``val_fraction`` of the rest as val; the release's test images are then prediction-only
(``afo predict --submission``) and are not in the store.

The mapping files are pickles: they are loaded only from ``root``, the folder the user names (README: trusted
files).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from afo.data.adapter import CheckRow, DatasetAdapter, check_row, nan_columns
from afo.data.files import DatasetFileNotFoundError, format_error, reading, require_file
from afo.data.media import load_image
from afo.data.nsd import coco_sources_at
from afo.data.options import (
    AdapterOptionError,
    as_list,
    parse_subject_number,
    progress,
    resolve_options,
    warn,
)
from afo.data.splits import split_images
from afo.data.store import StoreWriter, SurfaceLayout

ADAPTER = "algonauts2023"
HEMIS = ("lh", "rh")
ROI_CLASSES = ["prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words", "streams"]
CHUNK_ROWS = 256  # images' responses written at once

DEFAULTS: dict[str, Any] = {
    "name": "algonauts2023",
    "subjects": None,
    "fsaverage_surface": None,
    "surface": "sphere",
    "stim_info": None,
    "roi_classes": ROI_CLASSES,
    "test_fraction": 0.04,
    "val_fraction": 0.06,
    "seed": 0,
}

LAYOUT = (
    "<root>/subjNN/training_split/{training_fmri/{lh,rh}_training_fmri.npy, training_images/train-NNNN_nsd-NNNNN.png}, "
    "<root>/subjNN/test_split/test_images/test-NNNN_nsd-NNNNN.png, "
    "<root>/subjNN/roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy"
)
_IMAGE_RE = {split: re.compile(rf"^{split}-(\d+)_nsd-(\d+)\.png$") for split in ("train", "test")}


def image_ids(folder: Path, split: str) -> tuple[list[Path], np.ndarray]:
    """(image files sorted by name, their 0-based NSD ids) of a training_images or test_images folder."""
    if not folder.is_dir():
        raise DatasetFileNotFoundError(f"{folder}: image folder not found. Expected layout: {LAYOUT}")
    files = sorted(folder.glob("*.png"))
    ids = []
    for path in files:
        match = _IMAGE_RE[split].match(path.name)
        if not match:
            raise format_error(path, "file name", "does not parse", f"{split}-NNNN_nsd-NNNNN.png")
        ids.append(int(match.group(2)))
    if not files:
        raise DatasetFileNotFoundError(f"{folder}: no {split}-NNNN_nsd-NNNNN.png images. Expected layout: {LAYOUT}")
    return files, np.asarray(ids, dtype=np.int64)


def _load_npy(path: Path, what: str, expected: str) -> np.ndarray:
    """A plain (not pickled) .npy array, memory-mapped."""
    require_file(path, what, LAYOUT)
    with reading(path, what, expected):
        return np.load(path, mmap_mode="r", allow_pickle=False)


def load_mapping(path: Path) -> dict[int, str]:
    """A ``mapping_<class>.npy``: ``np.save`` of a dict, i.e. a pickle (loaded only from the user-named root)."""
    expected = "np.save of a dict {ROI value: ROI name}"
    with reading(path, "an ROI name mapping", expected):
        data = np.load(path, allow_pickle=True)
    mapping = data.item() if isinstance(data, np.ndarray) and data.shape == () else data
    if not isinstance(mapping, dict):
        raise format_error(path, "mapping", f"is a {type(mapping).__name__}", expected)
    return {int(k): str(v) for k, v in mapping.items()}


class Subject:
    """One subject's folder: challenge vertices, image files, and where its responses are."""

    def __init__(self, root: Path, name: str):
        self.name = name
        self.dir = root / name
        self.masks_dir = self.dir / "roi_masks"
        self.vertices, self.n_vertices = {}, {}
        for h in HEMIS:
            path = self.masks_dir / f"{h}.all-vertices_fsaverage_space.npy"
            mask = np.asarray(_load_npy(path, "challenge vertex mask", "an integer array [163842] (fsaverage)"))
            if mask.ndim != 1 or not mask.any():
                raise format_error(
                    path, "mask", f"has shape {mask.shape} and {np.count_nonzero(mask)} non-zero", "[163842]"
                )
            self.vertices[h] = np.flatnonzero(mask)  # every non-zero value, not only 1: the challenge's np.where
            self.n_vertices[h] = int(mask.size)
        self.n_voxels = sum(v.size for v in self.vertices.values())
        split_dir = self.dir / "training_split"
        self.train_files, self.train_ids = image_ids(split_dir / "training_images", "train")
        self.test_files, self.test_ids = image_ids(self.dir / "test_split" / "test_images", "test")

    def fmri_path(self, split: str, h: str) -> Path:
        if split == "train":
            return self.dir / "training_split" / "training_fmri" / f"{h}_training_fmri.npy"
        return self.dir / "test_split" / "test_fmri" / f"{h}_test_fmri.npy"

    def has_test_fmri(self) -> bool:
        return all(self.fmri_path("test", h).is_file() for h in HEMIS)

    def responses(self, split: str) -> list[np.ndarray]:
        """The memory-mapped [images, vertices] array of each hemisphere, shapes checked."""
        n_images = len(self.train_files if split == "train" else self.test_files)
        arrays = []
        for h in HEMIS:
            path = self.fmri_path(split, h)
            expected = f"float32 [{n_images} images, {self.vertices[h].size} challenge vertices of {h}]"
            data = _load_npy(path, f"{split} fMRI", expected)
            if data.shape != (n_images, self.vertices[h].size):
                raise format_error(path, "shape", f"is {data.shape}", expected)
            arrays.append(data)
        return arrays

    def blocks(self, split: str) -> Iterator[np.ndarray]:
        """[rows, voxels] blocks (left then right hemisphere) of a split's responses, CHUNK_ROWS images at a time."""
        lh, rh = self.responses(split)
        for start in range(0, lh.shape[0], CHUNK_ROWS):
            yield np.concatenate([lh[start : start + CHUNK_ROWS], rh[start : start + CHUNK_ROWS]], axis=1)

    def noise_ceiling(self) -> np.ndarray | None:
        """The release's noise ceiling in percent (it is stored as a fraction), None without its files."""
        paths = [self.dir / "test_split" / "noise_ceiling" / f"{h}_noise_ceiling.npy" for h in HEMIS]
        if not all(p.is_file() for p in paths):
            return None
        parts = []
        for path, h in zip(paths, HEMIS):
            nc = np.asarray(_load_npy(path, "noise ceiling", f"[{self.vertices[h].size}] fractions"), dtype=np.float64)
            if nc.shape != (self.vertices[h].size,):
                raise format_error(path, "shape", f"is {nc.shape}", f"[{self.vertices[h].size}] challenge vertices")
            parts.append(nc)
        return 100.0 * np.concatenate(parts)

    def rois(self, classes: list[str]) -> dict[str, Sequence[str]]:
        out: dict[str, Sequence[str]] = {}
        for roi in classes:
            paths = [self.masks_dir / f"{h}.{roi}_challenge_space.npy" for h in HEMIS]
            mapping_path = self.masks_dir / f"mapping_{roi}.npy"
            if not all(p.is_file() for p in [*paths, mapping_path]):
                warn(f"{ADAPTER} {self.name}: {paths} or {mapping_path} not found; ROI class {roi!r} left out")
                continue
            names = load_mapping(mapping_path)
            values = []
            for path, h in zip(paths, HEMIS):
                v = np.asarray(_load_npy(path, f"ROI class {roi}", f"[{self.vertices[h].size}] integers"))
                if v.shape != (self.vertices[h].size,):
                    raise format_error(path, "shape", f"is {v.shape}", f"[{self.vertices[h].size}] challenge vertices")
                values.append(v.astype(np.int64))
            out[roi] = ["" if v <= 0 else names.get(v, str(v)) for v in np.concatenate(values).tolist()]
        return out

    def layout(self) -> SurfaceLayout:
        index = np.full((self.n_voxels, 3), -1, dtype=np.int64)
        index[:, 0] = np.concatenate([self.vertices[h] for h in HEMIS])
        structure = np.concatenate([np.full(self.vertices[h].size, h, dtype=object) for h in HEMIS])
        return SurfaceLayout("fsaverage", structure, index, dict(self.n_vertices))


def surface_coords(folder: Path, surface: str, subject: Subject) -> np.ndarray:
    """fsaverage positions of the subject's challenge vertices (left then right); overlapping hemispheres (sphere,
    inflated) are set side by side, the right one moved right, as the NSD adapter does."""
    parts = []
    for h in HEMIS:
        path = require_file(
            folder / f"{h}.{surface}", f"fsaverage {surface} surface (option fsaverage_surface)", LAYOUT
        )
        with reading(path, "a FreeSurfer surface", "a FreeSurfer geometry file (nib.freesurfer.read_geometry)"):
            xyz, _ = nib.freesurfer.read_geometry(str(path))
        if len(xyz) != subject.n_vertices[h]:
            raise format_error(
                path, "vertices", f"has {len(xyz)}", f"{subject.n_vertices[h]}, as {subject.name}'s mask"
            )
        parts.append(np.asarray(xyz, dtype=np.float64)[subject.vertices[h]])
    left, right = parts
    if right[:, 0].min() < left[:, 0].max():
        width = left[:, 0].max() - left[:, 0].min()
        right = right + np.array([left[:, 0].max() - right[:, 0].min() + 0.5 * width, 0.0, 0.0])
    return np.concatenate([left, right]).astype(np.float32)


@dataclass
class Opened:
    """Everything read before any response: subjects, the images in store order, the split of each image."""

    root: Path
    opts: dict
    subjects: list[Subject]
    surface_dir: Path
    test_responses: bool  # the release's test responses are used as the test split
    image_ids: np.ndarray  # sorted distinct NSD ids: the store's image order
    image_files: dict[int, Path]  # NSD id -> one file showing it
    split_of: dict[int, int]  # NSD id -> split code


def _subject_names(root: Path, opts: dict) -> list[str]:
    if opts["subjects"] is not None:
        return [f"subj{parse_subject_number(s, 'subj01 or 1', ADAPTER):02d}" for s in as_list(opts["subjects"]) or []]
    names = sorted(p.name for p in root.glob("subj[0-9][0-9]") if p.is_dir())
    if not names:
        raise DatasetFileNotFoundError(f"{root}: no subjNN folders. Expected layout: {LAYOUT}")
    return names


def _surface_dir(opts: dict) -> Path:
    if not opts["fsaverage_surface"]:
        raise AdapterOptionError(
            f"{ADAPTER}: option fsaverage_surface is not set; name the folder with the fsaverage surfaces "
            f"{{lh,rh}}.{opts['surface']} (the NSD download's nsddata/freesurfer/fsaverage/surf, or "
            "$FREESURFER_HOME/subjects/fsaverage/surf): the vertex positions come from there"
        )
    folder = Path(opts["fsaverage_surface"])
    if not folder.is_dir():
        raise DatasetFileNotFoundError(f"{folder}: fsaverage surface folder (option fsaverage_surface) not found")
    return folder


def _held_out(subjects: list[Subject], fraction: float, seed: int) -> set[int]:
    """``fraction`` of the distinct training images (by NSD id, the same for every subject), drawn with ``seed``;
    topped up so that every subject has a test image (the store needs one)."""
    train = np.unique(np.concatenate([s.train_ids for s in subjects]))
    shuffled = train[np.random.default_rng(seed).permutation(train.size)]
    test = {int(i) for i in shuffled[: max(1, int(round(fraction * train.size)))]}
    for s in subjects:
        if not test.intersection(s.train_ids.tolist()):
            test.add(int(next(i for i in shuffled if i in set(s.train_ids.tolist()))))
    return test


def open_dataset(root: str | Path, options: Mapping[str, Any] | None) -> Opened:
    """Find the subjects, images and the split as :func:`prepare` will, without reading responses."""
    root = Path(root)
    opts = resolve_options(ADAPTER, options, DEFAULTS)
    opts["roi_classes"] = as_list(opts["roi_classes"]) or []
    fraction = float(opts["test_fraction"])
    if not 0.0 < fraction < 1.0:
        raise AdapterOptionError(f"{ADAPTER}: option test_fraction must be in (0, 1), got {fraction}")
    surface_dir = _surface_dir(opts)
    subjects = [Subject(root, name) for name in _subject_names(root, opts)]
    with_test = [s.name for s in subjects if s.has_test_fmri()]
    test_responses = len(with_test) == len(subjects)
    if with_test and not test_responses:
        warn(
            f"{ADAPTER}: only {with_test} have test_split/test_fmri; the test responses are not used and test "
            f"images are held out of the training images instead (test_fraction {fraction})"
        )
    files: dict[int, Path] = {}
    for s in subjects:
        files.update({int(i): f for i, f in zip(s.train_ids, s.train_files) if int(i) not in files})
        if test_responses:
            files.update({int(i): f for i, f in zip(s.test_ids, s.test_files) if int(i) not in files})
    ids = np.asarray(sorted(files), dtype=np.int64)
    if test_responses:
        test = {int(i) for s in subjects for i in s.test_ids}
    else:
        test = _held_out(subjects, fraction, int(opts["seed"]))
    split_of = split_images(ids.tolist(), test, opts["val_fraction"], int(opts["seed"]))
    return Opened(root, opts, subjects, surface_dir, test_responses, ids, files, split_of)


def _coco_sources(ds: Opened) -> list[str] | None:
    """``coco:<id>`` of every image from the ``stim_info`` table; None (pixels match them) without the option."""
    if not ds.opts["stim_info"]:
        warn(f"{ADAPTER}: option stim_info not set; images are matched with other datasets' by their pixels only")
        return None
    path = require_file(Path(ds.opts["stim_info"]), "NSD's nsd_stim_info_merged.csv (option stim_info)", LAYOUT)
    return coco_sources_at(path, ds.image_ids)


def _trial_ids(ds: Opened, subject: Subject) -> np.ndarray:
    """NSD id of each trial the store holds for ``subject``: its training images, then its test images."""
    return np.concatenate([subject.train_ids, subject.test_ids]) if ds.test_responses else subject.train_ids


def prepare(root: str | Path, out: str | Path, *, image_size: int, options: dict) -> dict:
    """Prepare the Algonauts 2023 release under ``root`` into the store ``out``; a report per subject."""
    ds = open_dataset(root, options)
    opts = ds.opts
    row_of = {int(i): r for r, i in enumerate(ds.image_ids)}
    sources = _coco_sources(ds)
    report: dict[str, Any] = {
        "dataset": ADAPTER,
        "n_images": int(ds.image_ids.size),
        "test_split": "release test responses" if ds.test_responses else "held out of the training images",
        "subjects": {},
    }
    images = (load_image(ds.image_files[int(i)]) for i in progress(ds.image_ids, f"{ADAPTER} images", unit="image"))
    with StoreWriter(out, name=opts["name"], modality="fmri", source=ADAPTER, image_size=image_size) as writer:
        writer.write_images(images, [f"nsd{int(i):05d}" for i in ds.image_ids], sources)
        for subject in ds.subjects:
            w = writer.subject(subject.name, subject.n_voxels, source=f"{ADAPTER} {subject.name}")
            ids = _trial_ids(ds, subject)
            splits = ("train", "test") if ds.test_responses else ("train",)
            done = 0
            for split in splits:
                for block in subject.blocks(split):
                    rows = ids[done : done + block.shape[0]]
                    image_rows = np.array([row_of[int(i)] for i in rows], dtype=np.int64)
                    w.append(block, image_rows, np.array([ds.split_of[int(i)] for i in rows], dtype=np.int8))
                    done += block.shape[0]
            nc = subject.noise_ceiling() if ds.test_responses else None
            result = w.finish(
                surface_coords(ds.surface_dir, opts["surface"], subject),
                rois=subject.rois(opts["roi_classes"]),
                noise_ceiling=nc,
                attrs={"space": "fsaverage", "test_split": "release" if ds.test_responses else "held_out"},
                layout=subject.layout(),
            )
            result["test_images_of_release"] = int(subject.test_ids.size)
            report["subjects"][subject.name] = result
    return report


def check(root: Path, options: Mapping[str, Any], *, read_data: bool = True) -> list[CheckRow]:
    """One row per subject, its files opened as :func:`prepare` opens them; nothing written."""
    ds = open_dataset(root, options)
    _coco_sources(ds)
    rows = []
    for subject in ds.subjects:
        ids = _trial_ids(ds, subject)
        codes = np.array([ds.split_of[int(i)] for i in ids], dtype=np.int64)
        splits = ("train", "test") if ds.test_responses else ("train",)
        for split in splits:
            subject.responses(split)  # shapes checked
        surface_coords(ds.surface_dir, ds.opts["surface"], subject)
        subject.rois(ds.opts["roi_classes"])
        if ds.test_responses:
            subject.noise_ceiling()
        nan = None
        if read_data:
            nan = nan_columns((b for split in splits for b in subject.blocks(split)), subject.n_voxels)
        rows.append(check_row(ADAPTER, subject.name, codes, len(np.unique(ids)), subject.n_voxels, nan))
    return rows


def challenge_vertices(root: str | Path, subject: str) -> dict[str, int]:
    """Challenge vertices per hemisphere of a subject of the release (how a submission's columns split)."""
    s = Subject(Path(root), subject)
    return {h: int(s.vertices[h].size) for h in HEMIS}


# The terms of use the data carry (docs/sharing.md gives the source); a model card repeats them.
TERMS = "Algonauts 2023 challenge data are NSD data: the Natural Scenes Dataset Terms and Conditions apply (naturalscenesdataset.org); cite Allen et al. 2022 and Gifford et al. 2023; stimuli: MS COCO images (Flickr terms of use; COCO annotations CC BY 4.0)"

FORMAT = DatasetAdapter(name=ADAPTER, defaults=DEFAULTS, prepare=prepare, check=check, terms=TERMS)
