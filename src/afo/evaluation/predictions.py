"""Predicted next to measured responses: what evaluation, decoding and the figures read.

Predictions come from prediction files (:mod:`afo.io.predictions`, written by the workflow's ``predict`` rule
or ``afo predict``), one per model file; a model made of per-ROI models is assembled here, each voxel taken
from its own ROI's file. Measured responses come from the prepared store, averaged over each image's repeats
within a split — the same targets training validates on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from afo.data.store import PreparedStore
from afo.errors import UserError
from afo.io.predictions import read_predictions


class PredictionError(UserError):
    """Prediction files that cannot be combined (overlapping voxels, different images)."""


@dataclass
class SubjectPredictions:
    """Predicted and measured responses of one subject on the images of one split.

    Shapes: n = predicted voxels (sorted store indices), m = the split's unique images (store rows, sorted).
    """

    key: str
    dataset: str
    subject: str
    voxels: np.ndarray  # int [n]
    images: np.ndarray  # int [m]
    predicted: np.ndarray  # float32 [m, n]
    measured: np.ndarray  # float32 [m, n], repeat-averaged, NaN = missing


def assemble(paths: Sequence[str | Path]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Prediction files of one model, or of per-ROI models, as one (images, voxels, pred) per subject key.

    Voxels come out sorted; each voxel must come from exactly one file, and the files of a subject must cover
    the same images.
    """
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for path in paths:
        for key, part in read_predictions(path).items():
            parts.setdefault(key, []).append(part)
    out = {}
    for key, chunks in sorted(parts.items()):
        images = chunks[0][0]
        if any(not np.array_equal(c[0], images) for c in chunks):
            raise PredictionError(f"{key}: the prediction files {list(map(str, paths))} cover different images")
        voxels = np.concatenate([c[1] for c in chunks])
        if np.unique(voxels).size != voxels.size:
            raise PredictionError(f"{key}: two prediction files predict the same voxel; give each ROI's model once")
        order = np.argsort(voxels)
        out[key] = (images, voxels[order], np.concatenate([c[2] for c in chunks], axis=1)[:, order])
    return out


def split_predictions(
    prediction_files: Sequence[str | Path], stores: Mapping[str, str | Path], split: str
) -> list[SubjectPredictions]:
    """Every predicted subject's predictions and measured means on the images of ``split``.

    Subjects whose dataset is not in ``stores`` are left out (a model may know more datasets than a job reads).
    """
    predictions = assemble(prediction_files)
    out = []
    for dataset, path in sorted(stores.items()):
        with PreparedStore(path) as store:
            for subject in store.subjects:
                key = f"{dataset}/{subject}"
                if key not in predictions:
                    continue
                images, voxels, pred = predictions[key]
                split_images, measured = store.split_means(subject, voxels, split)
                missing = np.setdiff1d(split_images, images)
                if missing.size:
                    raise PredictionError(
                        f"{key}: the prediction files lack {missing.size} {split} image(s) (e.g. row {missing[0]}); "
                        f"predict the {split} split (afo predict --splits ...)"
                    )
                rows = np.searchsorted(images, split_images)
                out.append(SubjectPredictions(key, dataset, subject, voxels, split_images, pred[rows], measured))
    return out
