"""The prepared store: one HDF5 file per dataset, holding what training reads fast.

Layout (format version 1)::

    /                       attrs: format_version, name, modality (fmri|eeg|meg), source, image_size
    /images                 uint8 [n_images, image_size, image_size, 3]   stimuli at model resolution
    /image_names            str   [n_images]                               file name / id of each stimulus
    /image_sources          str   [n_images]  optional: where the stimulus comes from, across datasets
                                              (``coco:<id>``, ``things:<file stem>``, ``imagenet:<stem>``; '' =
                                              unknown); read by the overlap step (afo.data.overlap)
    /subjects/<s>/responses       float32 [n_trials, n_voxels]  NaN = missing (masked in every loss and score)
    /subjects/<s>/trial_image     int64   [n_trials]            row of /images shown on the trial
    /subjects/<s>/trial_split     int8    [n_trials]            0 train, 1 val, 2 test (constant per image)
    /subjects/<s>/coords          float32 [n_voxels, 3]         physical coordinates (mm) or any 3-D layout
    /subjects/<s>/noise_ceiling   float32 [n_voxels]            percent (0-100); NaN where unknown
    /subjects/<s>/bad_voxel       bool    [n_voxels]            True = never usable (no finite value, constant,
                                                                or no finite value on any training trial)
    /subjects/<s>/rois/<set>      str     [n_voxels]            ROI label per voxel ('' = none), one per ROI set
    /subjects/<s>/layout/         optional, surface and grayordinate subjects (:class:`SurfaceLayout`):
        structure  str   [n_voxels]     fsaverage hemisphere (lh, rh) or CIFTI structure (CIFTI_STRUCTURE_...)
        index      int64 [n_voxels, 3]  vertex index in column 0 (columns 1-2 = -1), or a CIFTI voxel's i, j, k
        attrs: kind (fsaverage | cifti), n_vertices (json: structure -> vertices of the whole surface),
               volume_affine (16 numbers) and volume_shape (3) of a CIFTI file's volume part (absent without one)
    subject attrs: nc_source (given|repeats|none), n_bad_voxels, bad_voxel_reasons (json: all_nan, constant,
                            no_train -> voxel indices), n_inf_values (+-inf in the input, stored as NaN),
                            test_split (optional: where the test trials come from when an adapter chose between
                            sources, e.g. Algonauts 2023's ``release`` | ``held_out``; absent = the dataset's own),
                            test_only (True for a subject with test trials only, scored with another store's heads);
                            volumetric subjects: affine (16 numbers, voxel -> mm) and volume_shape (3)

Writers go through :class:`StoreWriter`, which writes into a hidden temporary sibling (:class:`afo.io.PendingFile`)
and renames it on :meth:`StoreWriter.close`, so a killed ``prepare`` never leaves a half-written store behind.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from afo.data.media import resize_image
from afo.data.noise_ceiling import check_percent, noise_ceiling_from_repeats
from afo.data.repeats import mean_over_repeats
from afo.errors import InputError
from afo.io import PendingFile, reading_hdf5
from afo.io.rows import RowReader

FORMAT_VERSION = 1
REBUILD = "rerun the workflow's prepare rule (or `afo prepare`)"
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_CODE = {name: code for code, name in enumerate(SPLITS)}
MODALITIES = ("fmri", "eeg", "meg")
_STR = h5py.string_dtype("utf-8")


# A prepared store, or the data offered to one, breaks the store's contract: afo.errors.InputError, under the name
# the store's callers (and users' scripts) know.
StoreError = InputError


LAYOUT_KINDS = ("fsaverage", "cifti")


@dataclass(frozen=True)
class SurfaceLayout:
    """Where each voxel of a surface or grayordinate subject sits in its dataset's own space.

    What brain maps in that space need (:mod:`afo.figures.brainmaps`): MGH files on fsaverage, CIFTI-2 dscalar
    files on the CIFTI file's grayordinates.

    Attributes:
        kind: ``fsaverage`` (vertices of the fsaverage hemispheres) or ``cifti`` (a CIFTI brain-model axis).
        structure: str [n_voxels]: hemisphere (``lh``/``rh``) or CIFTI structure (``CIFTI_STRUCTURE_...``).
        index: int64 [n_voxels, 3]: the vertex in column 0 (columns 1-2 = -1) for surface voxels, i, j, k of
            the CIFTI volume for subcortical voxels.
        n_vertices: surface structure -> number of vertices of the whole surface (what a map file must hold).
        volume_affine: [4, 4] voxel -> mm of the CIFTI volume part, None without volume voxels.
        volume_shape: its (X, Y, Z), None without volume voxels.
    """

    kind: str
    structure: np.ndarray
    index: np.ndarray
    n_vertices: dict
    volume_affine: np.ndarray | None = None
    volume_shape: tuple | None = None

    def check(self, n_voxels: int, source: str) -> None:
        """Refuse a layout that does not describe ``n_voxels`` voxels (a bug in the adapter, named as ``source``)."""
        if self.kind not in LAYOUT_KINDS:
            raise StoreError(f"{source}: layout kind {self.kind!r} is not one of {LAYOUT_KINDS}")
        if np.shape(self.structure) != (n_voxels,) or np.shape(self.index) != (n_voxels, 3):
            raise StoreError(
                f"{source}: layout has {np.shape(self.structure)} structures and index "
                f"{np.shape(self.index)} for {n_voxels} voxels"
            )
        surface = np.asarray(self.index)[:, 1] < 0
        for name in set(np.asarray(self.structure, dtype=object)[surface].tolist()):
            rows = surface & (np.asarray(self.structure, dtype=object) == name)
            if name not in self.n_vertices:
                raise StoreError(f"{source}: layout names surface {name!r} without its vertex count")
            if np.asarray(self.index)[rows, 0].max(initial=-1) >= int(self.n_vertices[name]):
                raise StoreError(f"{source}: layout has a vertex beyond {name}'s {self.n_vertices[name]} vertices")
        if (~surface).any() and (self.volume_affine is None or self.volume_shape is None):
            raise StoreError(f"{source}: layout has volume voxels but no volume_affine / volume_shape")


def real_float32(responses: np.ndarray, source: str) -> np.ndarray:
    """``responses`` as float32, refusing anything that is not real numbers with ``source`` named.

    Complex, object, text or boolean arrays are refused: a cast would drop imaginary parts, or turn labels into
    numbers, without a word. (A float64 beyond float32's range becomes inf, which the store masks and reports.)
    """
    responses = np.asarray(responses)
    if responses.dtype.kind not in "fiu":
        raise StoreError(
            f"{source}: responses have dtype {responses.dtype}, not real numbers. "
            "Fix: save real-valued responses (float32), e.g. the magnitude or real part as the analysis intends"
        )
    return responses.astype(np.float32)


def _voxel_problems(
    responses: h5py.Dataset, trial_split: np.ndarray, chunk_rows: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (all_nan, constant, no_train) masks per voxel [n_voxels], streaming over trials.

    ``no_train``: a voxel with finite values, but none on a training trial: a model would never learn it, so
    scoring it would score an untrained prediction.
    """
    n_trials, n_voxels = responses.shape
    finite_count = np.zeros(n_voxels, dtype=np.int64)
    train_count = np.zeros(n_voxels, dtype=np.int64)
    vmin = np.full(n_voxels, np.inf)
    vmax = np.full(n_voxels, -np.inf)
    for start in range(0, n_trials, chunk_rows):
        block = responses[start : start + chunk_rows]
        finite = np.isfinite(block)
        finite_count += finite.sum(0)
        train_count += finite[trial_split[start : start + chunk_rows] == SPLIT_CODE["train"]].sum(0)
        vmin = np.minimum(vmin, np.where(finite, block, np.inf).min(0))
        vmax = np.maximum(vmax, np.where(finite, block, -np.inf).max(0))
    all_nan = finite_count == 0
    constant = ~all_nan & (vmax - vmin <= 0)
    no_train = ~all_nan & ~constant & (train_count == 0)
    return all_nan, constant, no_train


class NoSpaceError(StoreError):
    """The file system of the store has no room for what comes next; nothing under the final name is touched."""


# Headroom kept free beyond the bytes a write needs (HDF5 metadata, chunk rounding, other jobs).
_SPACE_MARGIN = 64 << 20


def ensure_space(path: Path, nbytes: int) -> None:
    """Refuse a write of ``nbytes`` into ``path``'s file system when it has no room for it.

    Checked before the write rather than caught after: HDF5 can leave a half-written file in a state where
    the next call crashes the process instead of raising.
    """
    free = shutil.disk_usage(path.parent).free
    if free < nbytes + _SPACE_MARGIN:
        raise NoSpaceError(
            f"{path}: no space left on device for the prepared store ({free / 2**20:.0f} MiB free, about "
            f"{(nbytes + _SPACE_MARGIN) / 2**20:.0f} MiB needed next); free space there or run the workflow in a "
            "folder on a larger disk"
        )


class SubjectWriter:
    """Appends one subject's trials in chunks (bounded memory); finished by :meth:`finish`."""

    def __init__(self, group: h5py.Group, n_voxels: int, n_images: int, chunk_rows: int, source: str):
        self._group = group
        self._n_voxels = n_voxels
        self._n_images = n_images
        self._n_trials = 0
        self.source = source  # what the prepare log calls this subject's data (a file, or dataset/subject)
        self._inf_count = np.zeros(n_voxels, dtype=np.int64)  # +-inf values per voxel, stored as NaN
        group.create_dataset(
            "responses",
            shape=(0, n_voxels),
            maxshape=(None, n_voxels),
            dtype=np.float32,
            chunks=(min(chunk_rows, 256), min(n_voxels, 4096)),
        )
        group.create_dataset("trial_image", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        group.create_dataset("trial_split", shape=(0,), maxshape=(None,), dtype=np.int8, chunks=(4096,))

    def append(self, responses: np.ndarray, trial_image: np.ndarray, trial_split: Sequence[str] | np.ndarray) -> None:
        """Append trials: responses [n, n_voxels], trial_image [n] (row of /images), split [n] names or codes.

        Responses must be real numbers; +-inf is stored as NaN (missing) and counted for the report.
        """
        responses = real_float32(responses, self.source)
        inf = np.isinf(responses)  # NaN is the store's one marker of a missing value; inf is counted, then masked
        responses[inf] = np.nan
        trial_image = np.asarray(trial_image, dtype=np.int64)
        split = np.asarray(trial_split)
        if split.dtype.kind in "US" or split.dtype == object:
            unknown = sorted(set(map(str, split)) - set(SPLITS))
            if unknown:
                raise StoreError(f"unknown split label(s) {unknown}; use one of {list(SPLITS)}")
            split = np.array([SPLIT_CODE[str(s)] for s in split], dtype=np.int8)
        split = split.astype(np.int8)
        n = responses.shape[0]
        if responses.ndim != 2 or responses.shape[1] != self._n_voxels:
            raise StoreError(f"responses chunk has shape {responses.shape}, expected (n, {self._n_voxels})")
        if trial_image.shape != (n,) or split.shape != (n,):
            raise StoreError("trial_image and trial_split must have one entry per response row")
        if n and (trial_image.min() < 0 or trial_image.max() >= self._n_images):
            raise StoreError(f"trial_image out of range [0, {self._n_images})")
        if n and (split.min() < 0 or split.max() >= len(SPLITS)):
            raise StoreError(f"trial_split codes must be 0..{len(SPLITS) - 1}")
        self._inf_count += inf.sum(0)
        ensure_space(Path(self._group.file.filename), responses.nbytes + trial_image.nbytes + split.nbytes)
        for name, block in (("responses", responses), ("trial_image", trial_image), ("trial_split", split)):
            ds = self._group[name]
            ds.resize(self._n_trials + n, axis=0)
            ds[self._n_trials :] = block
        self._n_trials += n

    def finish(
        self,
        coords: np.ndarray,
        rois: dict[str, Sequence[str]] | None = None,
        noise_ceiling: np.ndarray | None = None,
        attrs: dict | None = None,
        layout: SurfaceLayout | None = None,
        test_only: bool = False,
    ) -> dict:
        """Write voxel-level arrays, mask bad voxels, compute the noise ceiling if not given.

        ``layout`` places surface and grayordinate voxels in their dataset's own space (see :class:`SurfaceLayout`).

        ``test_only``: a subject with test trials only, scored with the head another store's subject trained
        (NSD-synthetic for the NSD subjects); it needs no training trial, and no voxel is masked for lacking one.

        ``noise_ceiling`` [n_voxels] is in percent (0-100; NaN = unknown) and checked to be so. Bad voxels (no
        finite value, constant, or no finite value on a training trial) and +-inf values are masked, reported
        on stderr (the prepare log) and counted in the returned report: numbers of trials, voxels, bad voxels
        by reason, inf values, and where the noise ceiling came from.
        """
        g = self._group
        coords = np.asarray(coords, dtype=np.float32)
        if coords.shape != (self._n_voxels, 3):
            raise StoreError(f"coords has shape {coords.shape}, expected ({self._n_voxels}, 3)")
        if not np.isfinite(coords).all():
            bad = np.flatnonzero(~np.isfinite(coords).all(1))[:5].tolist()
            raise StoreError(f"coords has non-finite values (voxels {bad} ...)")
        if self._n_trials == 0:
            raise StoreError(f"{self.source}: subject has no trials")
        trial_image = g["trial_image"][:]
        trial_split = g["trial_split"][:]
        _check_split_by_image(trial_image, trial_split)
        _check_splits_present(trial_split, self.source, ("test",) if test_only else ("train", "test"))
        g.create_dataset("coords", data=coords)
        if layout is not None:
            _write_layout(g, layout, self._n_voxels, self.source)
        roi_group = g.create_group("rois")
        for set_name, labels in (rois or {}).items():
            values = np.asarray([str(x) for x in labels], dtype=object)
            if values.shape != (self._n_voxels,):
                raise StoreError(f"ROI set {set_name!r} has {values.shape[0]} labels for {self._n_voxels} voxels")
            roi_group.create_dataset(set_name, data=values, dtype=_STR)

        all_nan, constant, no_train = _voxel_problems(g["responses"], trial_split)
        if test_only:
            no_train[:] = False  # trained elsewhere: the other store's subject holds its training trials
            g.attrs["test_only"] = True
        bad = all_nan | constant | no_train
        g.create_dataset("bad_voxel", data=bad)
        g.attrs["n_bad_voxels"] = int(bad.sum())
        g.attrs["bad_voxel_reasons"] = json.dumps(
            {
                name: np.flatnonzero(mask).tolist()
                for name, mask in (("all_nan", all_nan), ("constant", constant), ("no_train", no_train))
            }
        )
        g.attrs["n_inf_values"] = int(self._inf_count.sum())
        if noise_ceiling is not None:
            nc = np.asarray(noise_ceiling, dtype=np.float32)
            if nc.shape != (self._n_voxels,):
                raise StoreError(f"noise ceiling has shape {nc.shape}, expected ({self._n_voxels},)")
            check_percent(nc, f"{self.source}: the noise ceiling")
            source = "given"
        else:
            nc = noise_ceiling_from_repeats(g["responses"], trial_image, trial_split)
            source = "repeats" if np.isfinite(nc).any() else "none"
        nc = nc.astype(np.float32)
        nc[bad] = np.nan
        g.create_dataset("noise_ceiling", data=nc)
        g.attrs["nc_source"] = source
        for key, value in (attrs or {}).items():
            g.attrs[key] = value
        report = {
            "n_trials": self._n_trials,
            "n_voxels": self._n_voxels,
            "n_bad_voxels": int(bad.sum()),
            "all_nan_voxels": int(all_nan.sum()),
            "constant_voxels": int(constant.sum()),
            "no_train_voxels": int(no_train.sum()),
            "inf_values": int(self._inf_count.sum()),
            "inf_voxels": int((self._inf_count > 0).sum()),
            "nc_source": source,
        }
        for line in masking_report(self.source, report):
            print(line, file=sys.stderr)
        return report


def _write_layout(group: h5py.Group, layout: SurfaceLayout, n_voxels: int, source: str) -> None:
    layout.check(n_voxels, source)
    g = group.create_group("layout")
    g.create_dataset("structure", data=np.asarray([str(x) for x in layout.structure], dtype=object), dtype=_STR)
    g.create_dataset("index", data=np.asarray(layout.index, dtype=np.int64))
    g.attrs["kind"] = layout.kind
    g.attrs["n_vertices"] = json.dumps({str(k): int(v) for k, v in layout.n_vertices.items()})
    if layout.volume_affine is not None and layout.volume_shape is not None:
        g.attrs["volume_affine"] = np.asarray(layout.volume_affine, dtype=np.float64).ravel()
        g.attrs["volume_shape"] = np.asarray(layout.volume_shape, dtype=np.int64)


def masking_report(source: str, report: dict) -> list[str]:
    """The prepare-log lines that say what :meth:`SubjectWriter.finish` masked (empty when nothing was)."""
    lines = []
    if report["inf_values"]:
        lines.append(
            f"{source}: {report['inf_values']} value(s) in {report['inf_voxels']} voxel(s) are +-inf; "
            "they are stored as NaN (masked in every loss and score)"
        )
    reasons = [
        (report["all_nan_voxels"], "with no finite value on any trial (all NaN or inf)"),
        (report["constant_voxels"], "constant on every trial"),
        (report["no_train_voxels"], "with no finite value on any training trial (a model would never learn them)"),
    ]
    if report["n_bad_voxels"]:
        lines.append(
            f"{source}: {report['n_bad_voxels']} bad voxel(s) masked (kept in place, excluded from training and "
            "scores): " + "; ".join(f"{n} {why}" for n, why in reasons if n)
        )
    return lines


def _check_splits_present(trial_split: np.ndarray, source: str, needed: Sequence[str] = ("train", "test")) -> None:
    """A subject without training trials cannot be fitted and one without test trials cannot be scored."""
    for name in needed:
        if not (trial_split == SPLIT_CODE[name]).any():
            raise StoreError(
                f"{source}: no {name} trials (splits present: "
                f"{sorted({SPLITS[c] for c in np.unique(trial_split).tolist()})}); every subject needs train and "
                "test trials. Fix: assign some images to that split (splits are by image)"
            )


def _check_split_by_image(trial_image: np.ndarray, trial_split: np.ndarray) -> None:
    """Splits are by image: every trial of one image must be in the same split (no leak)."""
    first = np.full(trial_image.max() + 1, -1, dtype=np.int64)
    order = np.argsort(trial_image, kind="stable")
    img, spl = trial_image[order], trial_split[order]
    first[img[::-1]] = spl[::-1]
    mismatch = spl != first[img]
    if mismatch.any():
        bad_image = int(img[np.flatnonzero(mismatch)[0]])
        raise StoreError(f"image {bad_image} appears in more than one split; splits must be by image, never by trial")


class StoreWriter:
    """Writes a prepared store atomically (a hidden temporary sibling, :class:`afo.io.PendingFile`, renamed on
    :meth:`close`).

    Use as a context manager; an exception inside the block removes the temporary file.
    """

    def __init__(self, path: str | os.PathLike, *, name: str, modality: str, source: str, image_size: int):
        if modality not in MODALITIES:
            raise StoreError(f"modality {modality!r} is not one of {MODALITIES}")
        self.path = Path(path)
        self._pending = PendingFile(self.path)
        self._tmp = self._pending.tmp
        self._file = h5py.File(self._tmp, "w")
        self._file.attrs.update(
            format_version=FORMAT_VERSION, name=name, modality=modality, source=source, image_size=image_size
        )
        self.name = name
        self.image_size = image_size
        self._n_images: int | None = None
        self._file.create_group("subjects")

    def write_images(
        self, images: Iterable[Image.Image | np.ndarray], names: Sequence[str], sources: Sequence[str] | None = None
    ) -> None:
        """Resize and store every stimulus, in the order of ``names`` (row i = names[i]).

        ``sources`` [n] names where each stimulus comes from across datasets (``coco:<id>``, ``things:<stem>``,
        '' = unknown; :mod:`afo.data.overlap` makes them), so images shared with another dataset are found by
        identity; without it they are found by their pixels only.
        """
        n = len(names)
        if sources is not None and len(sources) != n:
            raise StoreError(f"{len(sources)} image sources for {n} names")
        s = self.image_size
        ensure_space(self._tmp, n * s * s * 3)  # uncompressed size: an upper bound
        ds = self._file.create_dataset(
            "images", shape=(n, s, s, 3), dtype=np.uint8, chunks=(1, s, s, 3), compression="lzf"
        )
        count = 0
        for i, image in enumerate(images):
            if i >= n:
                raise StoreError(f"more images than names ({n})")
            ds[i] = resize_image(image, s)
            count += 1
        if count != n:
            raise StoreError(f"{count} images for {n} names")
        self._file.create_dataset("image_names", data=np.asarray(list(names), dtype=object), dtype=_STR)
        if sources is not None:
            self._file.create_dataset(
                "image_sources", data=np.asarray([str(x) for x in sources], dtype=object), dtype=_STR
            )
        self._n_images = n

    def subject(self, name: str, n_voxels: int, chunk_rows: int = 256, source: str | None = None) -> SubjectWriter:
        """A writer for one subject; ``source`` names its data in errors and the prepare log (a file, say)."""
        if self._n_images is None:
            raise StoreError("write_images must come before any subject")
        if name in self._file["subjects"]:
            raise StoreError(f"subject {name!r} written twice")
        source = source or f"{self.name} subject {name}"
        return SubjectWriter(self._file["subjects"].create_group(name), n_voxels, self._n_images, chunk_rows, source)

    def close(self) -> None:
        if not len(self._file["subjects"]):
            raise StoreError("a store needs at least one subject")
        self._file.close()
        self._pending.commit()

    def abort(self) -> None:
        if self._file.id.valid:
            self._file.close()
        self._pending.discard()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def volume_geometry(attrs: Mapping) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """(affine [4, 4], shape) from a subject's store attributes ``affine`` (16 numbers or 4 x 4, row-major, or
    their JSON) and ``volume_shape`` (3 integers), or None when the subject is not volumetric."""
    if "affine" not in attrs or "volume_shape" not in attrs:
        return None
    affine, shape = attrs["affine"], attrs["volume_shape"]
    if isinstance(affine, (str, bytes)):
        affine = json.loads(affine)
    if isinstance(shape, (str, bytes)):
        shape = json.loads(shape)
    affine = np.asarray(affine, dtype=np.float64).reshape(4, 4)
    grid = tuple(int(s) for s in np.asarray(shape).reshape(-1))
    if len(grid) != 3:
        raise ValueError(f"store attribute volume_shape must hold 3 integers, got {grid}")
    return affine, (grid[0], grid[1], grid[2])


@dataclass(frozen=True)
class SubjectInfo:
    name: str
    n_trials: int
    n_voxels: int
    n_bad_voxels: int
    nc_source: str
    roi_sets: tuple[str, ...]


class PreparedStore:
    """Read access to a prepared store (opened read-only; safe to share between processes)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no prepared store here; run the workflow's prepare rule (or `afo prepare`)")
        with reading_hdf5(self.path, "prepared store", REBUILD):
            self._file = h5py.File(self.path, "r")
        version = int(self._file.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{self.path}: store format version {version}, this afo reads {FORMAT_VERSION}; prepare it again"
            )
        self.name: str = str(self._file.attrs["name"])
        self.modality: str = str(self._file.attrs["modality"])
        self.source: str = str(self._file.attrs["source"])
        self.image_size: int = int(self._file.attrs["image_size"])

    @property
    def subjects(self) -> list[str]:
        return sorted(self._file["subjects"].keys())

    @property
    def n_images(self) -> int:
        return int(self._file["images"].shape[0])

    def images(self, index: slice | np.ndarray | None = None) -> np.ndarray:
        """uint8 [n, H, W, 3]."""
        ds = self._file["images"]
        return ds[:] if index is None else ds[index]

    def image_names(self) -> list[str]:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in self._file["image_names"][:]]

    def image_sources(self) -> list[str]:
        """Where each stimulus comes from across datasets ('' = unknown; all '' when the store records none)."""
        if "image_sources" not in self._file:
            return [""] * self.n_images
        return [x.decode() if isinstance(x, bytes) else str(x) for x in self._file["image_sources"][:]]

    def info(self, subject: str) -> SubjectInfo:
        g = self._group(subject)
        return SubjectInfo(
            name=subject,
            n_trials=int(g["responses"].shape[0]),
            n_voxels=int(g["responses"].shape[1]),
            n_bad_voxels=int(g.attrs["n_bad_voxels"]),
            nc_source=str(g.attrs["nc_source"]),
            roi_sets=tuple(sorted(g["rois"].keys())),
        )

    def _group(self, subject: str) -> h5py.Group:
        if subject not in self._file["subjects"]:
            raise StoreError(f"{self.path}: no subject {subject!r}; subjects are {self.subjects}")
        return self._file["subjects"][subject]

    def responses(self, subject: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """float32 [n_trials, n_voxels] (or the chosen rows); rows given as an index array must be sorted."""
        ds = self._group(subject)["responses"]
        return ds[:] if rows is None else ds[rows]

    def responses_dataset(self, subject: str) -> h5py.Dataset:
        return self._group(subject)["responses"]

    def response_reader(self, subject: str) -> RowReader:
        """Trial rows of a subject's responses read per batch from any process (see :mod:`afo.io.rows`)."""
        self._group(subject)  # a clear error for an unknown subject
        return RowReader(self.path, f"subjects/{subject}/responses", "prepared store", REBUILD)

    def image_reader(self) -> RowReader:
        """Rows of /images (uint8 [n, H, W, 3]) read per batch from any process."""
        return RowReader(self.path, "images", "prepared store", REBUILD)

    def split_means(self, subject: str, voxels: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images [m], repeat-averaged responses [m, n] float32) of ``voxels`` over the trials of ``split``.

        The split's trials are read in blocks: memory is the result, not the subject's responses.
        """
        rows = np.flatnonzero(self.trial_split(subject) == SPLIT_CODE[split])
        reader = self.response_reader(subject)
        try:
            return mean_over_repeats(
                lambda r: reader.read(r)[:, voxels], rows, self.trial_image(subject)[rows], len(voxels)
            )
        finally:
            reader.close()

    def trial_image(self, subject: str) -> np.ndarray:
        return self._group(subject)["trial_image"][:]

    def trial_split(self, subject: str) -> np.ndarray:
        return self._group(subject)["trial_split"][:]

    def coords(self, subject: str) -> np.ndarray:
        return self._group(subject)["coords"][:]

    def noise_ceiling(self, subject: str) -> np.ndarray:
        return self._group(subject)["noise_ceiling"][:]

    def bad_voxel(self, subject: str) -> np.ndarray:
        return self._group(subject)["bad_voxel"][:]

    def rois(self, subject: str, roi_set: str) -> np.ndarray:
        g = self._group(subject)["rois"]
        if roi_set not in g:
            raise StoreError(f"{self.path}: subject {subject!r} has no ROI set {roi_set!r}; it has {sorted(g)}")
        return np.asarray([x.decode() if isinstance(x, bytes) else str(x) for x in g[roi_set][:]], dtype=object)

    def layout(self, subject: str) -> SurfaceLayout | None:
        """Where a surface or grayordinate subject's voxels sit in its dataset's space; None for other subjects."""
        g = self._group(subject)
        if "layout" not in g:
            return None
        lg = g["layout"]
        affine = lg.attrs.get("volume_affine")
        shape = lg.attrs.get("volume_shape")
        return SurfaceLayout(
            kind=str(lg.attrs["kind"]),
            structure=np.asarray(
                [x.decode() if isinstance(x, bytes) else str(x) for x in lg["structure"][:]], dtype=object
            ),
            index=lg["index"][:],
            n_vertices={k: int(v) for k, v in json.loads(lg.attrs["n_vertices"]).items()},
            volume_affine=None if affine is None else np.asarray(affine, dtype=np.float64).reshape(4, 4),
            volume_shape=None if shape is None else tuple(int(x) for x in np.asarray(shape).ravel()),
        )

    def subject_attrs(self, subject: str) -> dict:
        return dict(self._group(subject).attrs)

    def image_split(self, subject: str) -> dict[int, int]:
        """Split code of every image the subject saw."""
        return dict(zip(self.trial_image(subject).tolist(), self.trial_split(subject).tolist()))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PreparedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
