"""Predictions of a model per unique image: dark knowledge (float16) and evaluation (float32).

Streamed: features are read (or computed, ``backbone.cache: none``) per chunk of images, in DataLoader workers
when ``num_workers`` > 0, and each chunk's predictions go straight to the file (:class:`afo.io.predictions.PredictionWriter`),
so memory is one chunk's, whatever the number of images.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from afo.errors import UserError
from afo.features import FeatureSource, feature_source
from afo.io.predictions import writing_predictions
from afo.io.tables import read_roi_selection
from afo.model import EncodingModel
from afo.training.modelfile import ModelFile, load_model
from afo.training.subjects import SubjectData, TrainingDataError, load_subjects

SPLITS = ("train", "val", "test")


class ImageChunks(torch.utils.data.Dataset):
    """The inputs of each (dataset, image rows) job in chunks of ``chunk`` images: item k = (job, chunk k's inputs).

    One dataset for every subject of a prediction pass, so DataLoader workers start once.
    """

    def __init__(self, bank: FeatureSource, jobs: Sequence[tuple[str, np.ndarray]], chunk: int):
        self.bank, self.jobs, self.chunk = bank, list(jobs), chunk
        self.items = [(j, start) for j, (_, images) in enumerate(self.jobs) for start in range(0, len(images), chunk)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[int, list[torch.Tensor]]:
        j, start = self.items[k]
        dataset, images = self.jobs[j]
        return j, self.bank.get(dataset, images[start : start + self.chunk])


@torch.no_grad()
def predicted_chunks(
    model: EncodingModel,
    bank: FeatureSource,
    jobs: Sequence[tuple[SubjectData, np.ndarray]],
    device: torch.device,
    chunk: int = 64,
    num_workers: int = 0,
) -> Iterator[tuple[int, np.ndarray]]:
    """(job index, predictions float32 [b, n]) per chunk of each job's image rows [m] (a subject and rows of its
    dataset), in order, eval mode (no jitter)."""
    was_training = model.training
    model.eval()
    chunks = ImageChunks(bank, [(s.dataset, images) for s, images in jobs], chunk)
    loader = torch.utils.data.DataLoader(chunks, batch_size=None, num_workers=num_workers)
    try:
        for j, inputs in loader:
            yield j, model(bank.features([f.to(device) for f in inputs]), jobs[j][0].key).float().cpu().numpy()
    finally:
        model.train(was_training)


def predict_images(
    model: EncodingModel,
    bank: FeatureSource,
    subject: SubjectData,
    images: np.ndarray,
    device: torch.device,
    chunk: int = 64,
) -> np.ndarray:
    """Predictions float32 [m, n] for the given image rows [m] of the subject's dataset, eval mode (no jitter)."""
    out = [pred for _, pred in predicted_chunks(model, bank, [(subject, images)], device, chunk)]
    if not out:
        return np.zeros((0, subject.voxels.size), dtype=np.float32)
    return np.concatenate(out)


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
    backbone: Mapping | None = None,
    num_workers: int = 0,
    chunk: int = 64,
) -> dict:
    """Predict every image of ``splits`` for each subject the model knows; with ``roi``, only that ROI's voxels.

    Writes predictions per unique image as ``dtype`` (see :mod:`afo.io.predictions`): float16 for dark
    knowledge (a soft target, half the size), float32 for evaluation. ``features``: the feature caches, or
    ``{}`` with ``backbone`` (the config's section) ``cache: none``.
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
        raise TrainingDataError(
            f"{model_path}: no subject of the given stores has a selected, usable voxel of this model"
        )
    datasets = sorted({s.dataset for s, _ in subjects})
    bank = feature_source({d: stores[d] for d in datasets}, features, backbone)
    subjects = sorted(subjects, key=lambda x: x[0].key)
    jobs = [(s, np.unique(np.concatenate([s.split_images[x] for x in splits]))) for s, _ in subjects]
    try:
        with writing_predictions(out, dtype) as writer:
            # Chunks arrive job by job, in order: each subject's group is written whole before the next opens
            # (a subject without images still gets its empty group).
            opened, part = -1, None
            for j, pred in predicted_chunks(model, bank, jobs, device, chunk, num_workers):
                while opened < j:
                    opened += 1
                    part = writer.subject(jobs[opened][0].key, jobs[opened][1], jobs[opened][0].voxels)
                part.write(pred[:, subjects[j][1]])
            for s, images in jobs[opened + 1 :]:
                writer.subject(s.key, images, s.voxels)
    finally:
        bank.close()
        for s, _ in subjects:
            s.responses.close()
    n_images = sum(images.size for _, images in jobs)
    return {"subjects": len(subjects), "images": int(n_images)}
