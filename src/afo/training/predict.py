"""Predictions of a model per unique image: dark knowledge (float16) and evaluation (float32)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from afo.errors import UserError
from afo.io.predictions import write_predictions
from afo.io.tables import read_roi_selection
from afo.model import EncodingModel
from afo.training.datamodule import FeatureBank, SubjectData, TrainingDataError, load_subjects
from afo.training.modelfile import ModelFile, load_model

SPLITS = ("train", "val", "test")


@torch.no_grad()
def predict_images(
    model: EncodingModel, bank: FeatureBank, subject: SubjectData, images: np.ndarray, device: torch.device, chunk: int = 64
) -> np.ndarray:
    """Predictions float32 [m, n] for the given image rows [m] of the subject's dataset, eval mode (no jitter)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), chunk):
        feats = [f.to(device) for f in bank.get(subject.dataset, images[start : start + chunk])]
        out.append(model(feats, subject.key).float().cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, subject.voxels.size), dtype=np.float32)
    return torch.cat(out).numpy()


def model_subjects(
    model_file: ModelFile, stores: Mapping[str, str | Path], wanted: Mapping[str, np.ndarray] | None = None
) -> list[tuple[SubjectData, np.ndarray]]:
    """The subjects of ``stores`` a model file predicts, with the model's column of each of their voxels.

    ``wanted`` (subject key -> voxel indices, e.g. one ROI's) restricts the voxels, and subjects left without any
    are dropped. Returns [] when no store holds a predicted subject.
    """
    selection = {k: v.numpy() for k, v in model_file.voxels.items()}
    if wanted is not None:
        selection = {k: np.intersect1d(v, wanted[k]) for k, v in selection.items() if k in wanted}
        selection = {k: v for k, v in selection.items() if v.size}
    used = {d: p for d, p in stores.items() if any(k.startswith(f"{d}/") for k in selection)}
    if not used:
        return []
    return [
        (s, np.searchsorted(model_file.voxels[s.key].numpy(), s.voxels))
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
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise UserError(f"unknown split(s) {unknown}; use {', '.join(SPLITS)}")
    if dtype not in ("float16", "float32"):
        raise UserError(f"prediction dtype {dtype!r}: use float16 or float32")
    if roi is not None and rois is None:
        raise UserError("roi needs the ROI assignment table")
    model, model_file = load_model(model_path)
    model.to(device)
    subjects = model_subjects(model_file, stores, read_roi_selection(rois, roi) if roi is not None else None)
    if not subjects:
        raise TrainingDataError(f"{model_path}: no subject of the given stores has a selected, usable voxel of this model")
    bank = FeatureBank({d: features[d] for d in sorted({s.dataset for s, _ in subjects})})
    predictions = {}
    for s, index in subjects:
        images = np.unique(np.concatenate([s.split_images[x] for x in splits]))
        pred = predict_images(model, bank, s, images, device)[:, index]
        predictions[s.key] = (images, s.voxels, pred)
    write_predictions(out, predictions, dtype=dtype)
    return {"subjects": len(predictions), "images": int(sum(p[0].size for p in predictions.values()))}
