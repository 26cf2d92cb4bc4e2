"""Predictions of a model file for the images of chosen splits: dark knowledge and downstream analyses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from afo.training.checkpoint import load_model
from afo.io.predictions import write_predictions
from afo.io.tables import read_roi_selection
from afo.training.data import FeatureBank, SubjectData, load_subjects
from afo.training.module import predict_images


def model_subjects(
    payload: dict, stores: Mapping[str, str | Path], wanted: Mapping[str, np.ndarray] | None = None
) -> list[tuple[SubjectData, np.ndarray]]:
    """The subjects of ``stores`` a model file predicts, with the model's column of each of their voxels.

    ``payload`` is :func:`load_model`'s; ``wanted`` (subject key -> voxel indices, e.g. one ROI's) restricts the
    voxels, and subjects left without any are dropped. Returns [] when no store holds a predicted subject.
    """
    selection = {k: v.numpy() for k, v in payload["voxels"].items()}
    if wanted is not None:
        selection = {k: np.intersect1d(v, wanted[k]) for k, v in selection.items() if k in wanted}
        selection = {k: v for k, v in selection.items() if v.size}
    used = {d: p for d, p in stores.items() if any(k.startswith(f"{d}/") for k in selection)}
    if not used:
        return []
    return [
        (s, np.searchsorted(payload["voxels"][s.key].numpy(), s.voxels))
        for s in load_subjects(used, selection=selection)
    ]


def predict_file(
    model_path: str | Path,
    stores: Mapping[str, str | Path],
    features: Mapping[str, str | Path],
    splits: Sequence[str],
    out: str | Path,
    rois: str | Path | None = None,
    roi: str | None = None,
    dtype: str = "float16",
    device: torch.device | str = "cpu",
) -> dict:
    """Predict every image of ``splits`` for each subject the model knows; with ``roi``, only that ROI's voxels.

    Writes predictions per unique image as ``dtype`` (see :mod:`afo.io.predictions`): float16 for dark
    knowledge (a soft target, half the size), float32 for evaluation.
    """
    device = torch.device(device)
    unknown = sorted(set(splits) - {"train", "val", "test"})
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; use train, val, test")
    model, payload = load_model(model_path)
    model.to(device)
    if roi is not None and rois is None:
        raise ValueError("roi needs the ROI assignment table")
    subjects = model_subjects(payload, stores, read_roi_selection(rois, roi) if roi is not None else None)
    if not subjects:
        raise ValueError("no subject has any selected, usable voxel: check the ROI selection and the stores")
    bank = FeatureBank({d: features[d] for d in sorted({s.dataset for s, _ in subjects})})
    predictions = {}
    for s, index in subjects:
        images = np.unique(np.concatenate([s.split_images[x] for x in splits]))
        pred = predict_images(model, bank, s, images, device)[:, index]
        predictions[s.key] = (images, s.voxels, pred)
    write_predictions(out, predictions, dtype=dtype)
    return {"subjects": len(predictions), "images": int(sum(p[0].size for p in predictions.values()))}
