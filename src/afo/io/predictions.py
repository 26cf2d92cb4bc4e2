"""Prediction files: a model's predicted responses per unique image, per subject, in HDF5.

Layout: ``/<dataset>/<subject>/{images, voxels, pred}`` — ``images`` int64 [m] image rows of the dataset's
prepared store, ``voxels`` int64 [n] voxel indices of the store, ``pred`` [m, n]. Evaluation reads float32
files; dark knowledge is written float16 (it is a soft training target, and half the size).
Subject keys are ``"<dataset>/<subject>"`` (see :func:`afo.io.tables.subject_key`). Each subject's group
carries a SHA-256 of its three arrays (attr ``sha256``), checked on read: a damaged file that keeps its size is
refused instead of scored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from afo.io import CorruptFileError, atomic_path, reading_hdf5

REBUILD = "rerun the workflow (its predict or dark_knowledge rule), or `afo predict`"

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]  # (images [m], voxels [n], pred [m, n])


def write_predictions(path: str | Path, predictions: Mapping[str, Prediction], dtype: str = "float16",
                      attrs: Mapping[str, str | int | float] | None = None) -> None:
    """Write predictions per subject key atomically, ``pred`` stored as ``dtype`` (float16 or float32); ``attrs``
    become root attributes (e.g. the image names of a folder's predictions, :func:`afo.api.predict_folder`)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(dict(attrs or {}))
            for key, (images, voxels, pred) in sorted(predictions.items()):
                arrays = (np.asarray(images, dtype=np.int64), np.asarray(voxels, dtype=np.int64), np.asarray(pred, dtype=dtype))
                g = f.create_group(key)
                for name, array in zip(("images", "voxels", "pred"), arrays):
                    g.create_dataset(name, data=array)
                g.attrs["sha256"] = _checksum(*arrays)


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
                    raise CorruptFileError(f"{path}: the predictions of {dataset}/{sub} do not match their checksum "
                                           f"(the file was damaged); delete it and {REBUILD}")
                out[f"{dataset}/{sub}"] = (images, voxels, pred.astype(np.float32))
    return out
