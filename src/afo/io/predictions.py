"""Prediction files: a model's predicted responses per unique image, per subject, in HDF5.

Layout: ``/<dataset>/<subject>/{images, voxels, pred}`` — ``images`` int64 [m] image rows of the dataset's
prepared store, ``voxels`` int64 [n] voxel indices of the store, ``pred`` [m, n] (contiguous, uncompressed: rows
are read per batch from a memory map, :mod:`afo.io.rows`). Evaluation reads float32 files; dark knowledge is
written float16 (it is a soft training target, and half the size). :class:`PredictionWriter` writes a file row
block by row block and :func:`prediction_parts` reads one lazily, so neither holds a whole ``pred`` in memory.
Subject keys are ``"<dataset>/<subject>"`` (see :func:`afo.io.tables.subject_key`). Each subject's group
carries a SHA-256 of its three arrays (attr ``sha256``), checked on read: a damaged file that keeps its size is
refused instead of scored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from afo.io import CorruptFileError, atomic_path, reading_hdf5
from afo.io.rows import RowReader

#: Rows of ``pred`` checked per block when a file is verified lazily.
_VERIFY_ROWS = 1024

REBUILD = "rerun the workflow (its predict or dark_knowledge rule), or `afo predict`"

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]  # (images [m], voxels [n], pred [m, n])


def write_predictions(
    path: str | Path,
    predictions: Mapping[str, Prediction],
    dtype: str = "float16",
    attrs: Mapping[str, str | int | float] | None = None,
) -> None:
    """Write predictions per subject key atomically, ``pred`` stored as ``dtype`` (float16 or float32); ``attrs``
    become root attributes (e.g. the image names of a folder's predictions, :func:`afo.api.predict_folder`)."""
    with writing_predictions(path, dtype, attrs) as writer:
        for key, (images, voxels, pred) in sorted(predictions.items()):
            writer.subject(key, images, voxels).write(pred)


def _checksum(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def read_predictions(path: str | Path) -> dict[str, Prediction]:
    """Every subject's (images, voxels, pred as float32) of a prediction file, checksums verified."""
    out = {}
    with reading_hdf5(path, "prediction file", REBUILD), h5py.File(path, "r") as f:
        for dataset in f:
            for sub in f[dataset]:
                g = f[dataset][sub]
                images, voxels, pred = g["images"][:], g["voxels"][:], g["pred"][:]
                if "sha256" in g.attrs and g.attrs["sha256"] != _checksum(images, voxels, pred):
                    raise CorruptFileError(
                        f"{path}: the predictions of {dataset}/{sub} do not match their checksum "
                        f"(the file was damaged); delete it and {REBUILD}"
                    )
                out[f"{dataset}/{sub}"] = (images, voxels, pred.astype(np.float32))
    return out


class SubjectPredictionWriter:
    """Rows of one subject's ``pred``, written in order by :meth:`write` (its checksum computed on the way)."""

    def __init__(self, group: h5py.Group, images: np.ndarray, voxels: np.ndarray, dtype: str):
        self._images = np.asarray(images, dtype=np.int64)
        self._voxels = np.asarray(voxels, dtype=np.int64)
        group.create_dataset("images", data=self._images)
        group.create_dataset("voxels", data=self._voxels)
        self._pred = group.create_dataset("pred", shape=(self._images.size, self._voxels.size), dtype=dtype)
        self._group, self._dtype, self._row = group, dtype, 0
        self._digest = hashlib.sha256()
        for array in (self._images, self._voxels):
            self._digest.update(np.ascontiguousarray(array).tobytes())

    def write(self, block: np.ndarray) -> None:
        """The next rows [b, n] of ``pred`` (image order of ``images``)."""
        block = np.ascontiguousarray(block, dtype=self._dtype)
        if block.ndim != 2 or block.shape[1] != self._voxels.size or self._row + block.shape[0] > self._images.size:
            raise ValueError(f"prediction block {block.shape} does not fit rows {self._row}.. of {self._pred.shape}")
        if block.shape[0]:
            self._pred[self._row : self._row + block.shape[0]] = block
        self._digest.update(block.tobytes())
        self._row += block.shape[0]

    def finish(self) -> None:
        if self._row != self._images.size:
            raise ValueError(f"{self._row} of {self._images.size} prediction rows written")
        self._group.attrs["sha256"] = self._digest.hexdigest()


class PredictionWriter:
    """A prediction file written subject by subject, row block by row block (:func:`writing_predictions`)."""

    def __init__(self, file: h5py.File, dtype: str):
        self._file, self._dtype = file, dtype
        self._open: SubjectPredictionWriter | None = None

    def subject(self, key: str, images: np.ndarray, voxels: np.ndarray) -> SubjectPredictionWriter:
        """A writer for one subject key's predictions of ``images`` [m] x ``voxels`` [n]; finish it before the next."""
        if self._open is not None:
            self._open.finish()
        self._open = SubjectPredictionWriter(self._file.create_group(key), images, voxels, self._dtype)
        return self._open

    def close(self) -> None:
        if self._open is not None:
            self._open.finish()
            self._open = None


@contextmanager
def writing_predictions(
    path: str | Path, dtype: str = "float16", attrs: Mapping[str, str | int | float] | None = None
) -> Iterator[PredictionWriter]:
    """A :class:`PredictionWriter` whose file appears under ``path`` only when the block ends without error;
    ``attrs`` become the file's root attributes."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(dict(attrs or {}))
            writer = PredictionWriter(f, dtype)
            yield writer
            writer.close()


@dataclass
class PredictionPart:
    """One subject's predictions in a file, read lazily: ``images`` [m], ``voxels`` [n], ``pred`` rows on demand."""

    path: str
    key: str
    images: np.ndarray  # int64 [m]
    voxels: np.ndarray  # int64 [n]
    pred: RowReader  # .read(rows) -> [len(rows), n] in the file's dtype


def prediction_parts(path: str | Path, keys: set[str] | None = None, verify: bool = True) -> dict[str, PredictionPart]:
    """Every subject (or those in ``keys``) of a prediction file as a :class:`PredictionPart`.

    ``verify``: the checksum of each part is checked by reading ``pred`` once in row blocks (bounded memory).
    """
    out = {}
    with reading_hdf5(path, "prediction file", REBUILD), h5py.File(path, "r") as f:
        for dataset in f:
            for sub in f[dataset]:
                key = f"{dataset}/{sub}"
                if keys is not None and key not in keys:
                    continue
                g = f[dataset][sub]
                images, voxels, pred = g["images"][:], g["voxels"][:], g["pred"]
                if verify and "sha256" in g.attrs:
                    digest = hashlib.sha256()
                    for array in (images, voxels):
                        digest.update(np.ascontiguousarray(array).tobytes())
                    for start in range(0, pred.shape[0], _VERIFY_ROWS):
                        digest.update(np.ascontiguousarray(pred[start : start + _VERIFY_ROWS]).tobytes())
                    if g.attrs["sha256"] != digest.hexdigest():
                        raise CorruptFileError(
                            f"{path}: the predictions of {key} do not match their checksum "
                            f"(the file was damaged); delete it and {REBUILD}"
                        )
                out[key] = PredictionPart(
                    str(path), key, images, voxels, RowReader(path, f"{key}/pred", "prediction file", REBUILD)
                )
    return out
