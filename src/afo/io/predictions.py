"""Prediction files: a model's predicted responses per unique image, per subject, in HDF5.

Layout: ``/<dataset>/<subject>/{images, voxels, pred}`` — ``images`` int64 [m] image rows of the dataset's
prepared store, ``voxels`` int64 [n] voxel indices of the store, ``pred`` [m, n]. Evaluation reads float32
files; dark knowledge is written float16 (it is a soft training target, and half the size).
Subject keys are ``"<dataset>/<subject>"`` (see :func:`afo.io.tables.subject_key`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from afo.io import atomic_path

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]  # (images [m], voxels [n], pred [m, n])


def write_predictions(path: str | Path, predictions: Mapping[str, Prediction], dtype: str = "float16") -> None:
    """Write predictions per subject key atomically, ``pred`` stored as ``dtype`` (float16 or float32)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, (images, voxels, pred) in sorted(predictions.items()):
                g = f.create_group(key)
                g.create_dataset("images", data=np.asarray(images, dtype=np.int64))
                g.create_dataset("voxels", data=np.asarray(voxels, dtype=np.int64))
                g.create_dataset("pred", data=np.asarray(pred, dtype=dtype))


def read_predictions(path: str | Path) -> dict[str, Prediction]:
    """Every subject's (images, voxels, pred as float32) of a prediction file."""
    out = {}
    with h5py.File(path, "r") as f:
        for dataset in f:
            for sub in f[dataset]:
                g = f[dataset][sub]
                out[f"{dataset}/{sub}"] = (g["images"][:], g["voxels"][:], g["pred"][:].astype(np.float32))
    return out
