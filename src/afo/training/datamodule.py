"""The data of a training job, as a LightningDataModule: subjects, targets, features, batches.

One job reads the chosen voxels of every subject of its stores (:func:`load_subjects`), optionally a dark-knowledge
target per image (:func:`attach_dark_knowledge`), and the backbone features of every image in memory
(:class:`FeatureBank`). Training batches mix subjects (:class:`MixedBatches`, one epoch = :class:`EpochSampler`);
validation runs over chunks of each subject's validation images (:class:`ValidationChunks`).

A *subject key* is ``"<dataset>/<subject>"``, unique across datasets. Every job names the voxels it
models per subject (all usable voxels, or one ROI's); the model's voxel i of a subject is ``voxels[i]``
of the prepared store. Bad voxels (all-NaN, constant) are never modelled.

Targets per image, not per trial: validation and test responses are averaged over the repeats of each
image; dark knowledge is a prediction per image. Training uses single trials (noisy targets), as the paper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from afo.data.store import SPLIT_CODE, PreparedStore
from afo.data.repeats import average_repeats
from afo.errors import UserError
from afo.features import FeatureCache
from afo.io.predictions import read_predictions
from afo.io.tables import subject_key
from afo.training.lightning import pl


class TrainingDataError(UserError):
    """The stores, ROI selection or dark-knowledge files of a job do not give it data to train on."""


@dataclass
class SubjectData:
    """One subject's data for one job. Shapes: n = modelled voxels, t = training trials, m = images."""

    key: str
    dataset: str
    voxels: np.ndarray  # int [n] voxel indices into the prepared store
    coords: np.ndarray  # float32 [n, 3]
    train_images: np.ndarray  # int [t] image row (in the dataset's store) of each training trial
    train_responses: torch.Tensor  # float32 [t, n], NaN = missing
    split_images: dict[str, np.ndarray]  # split -> int [m] unique image rows
    split_means: dict[str, torch.Tensor]  # split -> float32 [m, n] repeat-averaged responses
    noise_ceiling: np.ndarray  # float32 [n] percent, NaN = unknown
    own: np.ndarray  # bool [n]: ground-truth loss and checkpointing on these voxels (stage 2: the own ROI)
    dk: torch.Tensor | None = None  # float32 [n_images_of_dataset, n] dark knowledge per image, NaN = none


def load_subjects(
    stores: Mapping[str, str | Path],
    selection: Mapping[str, np.ndarray] | None = None,
    own: Mapping[str, np.ndarray] | None = None,
) -> list[SubjectData]:
    """Read every subject of every store (dataset name -> store path).

    ``selection`` (subject key -> voxel indices) restricts the voxels; subjects absent from it are skipped.
    ``own`` (subject key -> voxel indices, a subset of the selection) marks the ground-truth voxels; default all.
    """
    subjects = []
    for dataset, path in sorted(stores.items()):
        with PreparedStore(path) as store:
            for name in store.subjects:
                key = subject_key(dataset, name)
                bad = store.bad_voxel(name)
                if selection is None:
                    voxels = np.flatnonzero(~bad)
                elif key in selection:
                    voxels = np.asarray(selection[key], dtype=np.int64)
                    voxels = voxels[~bad[voxels]]
                else:
                    continue
                if voxels.size == 0:
                    continue
                responses = store.responses(name)[:, voxels]
                trial_image = store.trial_image(name)
                split = store.trial_split(name)
                split_images, split_means = {}, {}
                for split_name, code in SPLIT_CODE.items():
                    rows = split == code
                    images, means = average_repeats(responses[rows], trial_image[rows])
                    split_images[split_name] = images
                    split_means[split_name] = torch.from_numpy(means)
                train = split == SPLIT_CODE["train"]
                own_mask = np.ones(voxels.size, dtype=bool)
                if own is not None:
                    own_mask = np.isin(voxels, own.get(key, np.empty(0, dtype=np.int64)))
                subjects.append(
                    SubjectData(
                        key=key,
                        dataset=dataset,
                        voxels=voxels,
                        coords=store.coords(name)[voxels],
                        train_images=trial_image[train],
                        train_responses=torch.from_numpy(np.ascontiguousarray(responses[train], dtype=np.float32)),
                        split_images=split_images,
                        split_means=split_means,
                        noise_ceiling=store.noise_ceiling(name)[voxels],
                        own=own_mask,
                    )
                )
    if not subjects:
        raise TrainingDataError("no subject has any selected, usable voxel: check the ROI selection and the stores")
    return subjects


def attach_dark_knowledge(subjects: Sequence[SubjectData], dk_paths: Sequence[str | Path], n_images: Mapping[str, int]) -> None:
    """Fill ``subject.dk`` from dark-knowledge files (see :mod:`afo.io.predictions`); NaN where none covers."""
    for s in subjects:
        s.dk = torch.full((n_images[s.dataset], s.voxels.size), float("nan"))
    by_key = {s.key: s for s in subjects}
    for path in dk_paths:
        for key, (images, voxels, pred) in read_predictions(path).items():
            if key not in by_key:
                continue
            s = by_key[key]
            cols = np.searchsorted(s.voxels, voxels)
            keep = (cols < s.voxels.size) & (s.voxels[np.minimum(cols, s.voxels.size - 1)] == voxels)
            s.dk[np.ix_(images.astype(np.int64), cols[keep])] = torch.from_numpy(pred[:, keep])
    for s in subjects:
        uncovered = ~torch.isfinite(s.dk[s.train_images]).all(0) & torch.from_numpy(~s.own)
        if bool(uncovered.any()):
            raise TrainingDataError(
                f"dark knowledge does not cover {int(uncovered.sum())} helper voxel(s) of {s.key} on its training images; "
                "every stage-1 ROI model must dump its predictions"
            )


class FeatureBank:
    """Features of every dataset a job reads, in memory (float16) for fast random batches."""

    def __init__(self, caches: Mapping[str, str | Path]):
        self.layers: dict[str, list[torch.Tensor]] = {}
        shapes = None
        for dataset, path in sorted(caches.items()):
            cache = FeatureCache(path)
            if shapes is not None and cache.layer_shapes != shapes:
                raise TrainingDataError(f"{path}: layer shapes {cache.layer_shapes} differ from other datasets' {shapes}; use one backbone spec")
            shapes = cache.layer_shapes
            self.layers[dataset] = cache.load()
        self.layer_shapes: list[tuple[int, int, int]] = shapes or []

    def n_images(self, dataset: str) -> int:
        return int(self.layers[dataset][0].shape[0])

    def get(self, dataset: str, rows: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return [layer[rows] for layer in self.layers[dataset]]


@dataclass
class Batch:
    """A mixed-subject training batch: per subject, trial targets and the image rows they saw."""

    features: list[torch.Tensor]  # per layer [B, C, h, w], rows grouped by subject in ``parts`` order
    parts: list[tuple[str, int, int]] = field(default_factory=list)  # (subject key, start, stop) rows of features
    targets: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> [b, n_sampled]
    voxel_index: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> [n_sampled] model voxel index
    own: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> bool [n_sampled]
    dk: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> [b, n_sampled] (when dark knowledge is used)

    def to(self, device: torch.device) -> Batch:
        move = lambda d: {k: v.to(device, non_blocking=True) for k, v in d.items()}  # noqa: E731
        return Batch(
            [f.to(device, non_blocking=True) for f in self.features],
            self.parts,
            move(self.targets),
            move(self.voxel_index),
            move(self.own),
            move(self.dk),
        )


class MixedBatches(torch.utils.data.Dataset):
    """Random training batches mixing subjects, reproducible from (seed, epoch, batch index).

    Trials are drawn uniformly from the pooled training trials of all subjects, so larger datasets weigh
    more, as in the paper's mixed mini-batches; each subject then trains a random subset of at most
    ``max_voxels`` of its voxels in that step. Indexed by ``(epoch, i)`` from :class:`EpochSampler`.
    """

    def __init__(
        self, subjects: Sequence[SubjectData], bank: FeatureBank, batch_size: int, max_voxels: int, seed: int,
        shard: tuple[int, int] = (0, 1),
    ):
        self.subjects = list(subjects)
        self.bank = bank
        self.batch_size = batch_size
        self.max_voxels = max_voxels
        self.seed = seed
        # DDP (compute.train_devices = N): rank r of N reads rows r, r + N, ... of every global batch, with the
        # voxels the whole batch samples, so the N ranks together see exactly the one-device batch.
        self.rank, self.world = shard
        self._offsets = np.cumsum([0] + [len(s.train_images) for s in self.subjects])
        if self._offsets[-1] == 0:
            raise TrainingDataError("no training trial in any subject: check the stores' train split")

    @property
    def n_trials(self) -> int:
        return int(self._offsets[-1])

    def __len__(self) -> int:  # unused by EpochSampler; a nominal size for tools that ask
        return max(1, self.n_trials // self.batch_size)

    def __getitem__(self, index: tuple[int, int]) -> Batch:
        epoch, i = index
        rng = np.random.default_rng([self.seed, epoch, i])
        picks = np.sort(rng.integers(0, self.n_trials, size=self.batch_size))
        owner = np.searchsorted(self._offsets, picks, side="right") - 1
        mine = np.arange(picks.size) % self.world == self.rank  # this rank's rows of the global batch
        feats: list[list[torch.Tensor]] = []
        batch = Batch(features=[])
        start = 0
        for j in np.unique(owner):
            s = self.subjects[j]
            n = s.voxels.size
            # Drawn for every subject of the global batch on every rank, so all ranks sample the same voxels.
            voxel = np.sort(rng.choice(n, size=min(n, self.max_voxels), replace=False)) if n > self.max_voxels else np.arange(n)
            trials = picks[(owner == j) & mine] - self._offsets[j]
            if trials.size == 0:
                continue
            vi = torch.from_numpy(voxel)
            images = s.train_images[trials]
            feats.append(self.bank.get(s.dataset, images))
            batch.parts.append((s.key, start, start + trials.size))
            start += trials.size
            batch.targets[s.key] = s.train_responses[torch.from_numpy(trials)][:, vi]
            batch.voxel_index[s.key] = vi
            batch.own[s.key] = torch.from_numpy(s.own[voxel])
            if s.dk is not None:
                batch.dk[s.key] = s.dk[torch.from_numpy(images)][:, vi]
        batch.features = [torch.cat([f[k] for f in feats]) for k in range(len(feats[0]))]
        return batch


def epoch_batches(n_trials: int, batch_size: int, epoch_fraction: float) -> int:
    """Batches per epoch: an epoch sees ``epoch_fraction`` of the pooled training trials (at least one batch)."""
    return max(1, math.ceil(epoch_fraction * n_trials / batch_size))


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, i)`` for i < batches per epoch; Lightning calls :meth:`set_epoch` every epoch."""

    def __init__(self, n_trials: int, batch_size: int, epoch_fraction: float):
        self.n_batches = epoch_batches(n_trials, batch_size, epoch_fraction)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter((self.epoch, i) for i in range(self.n_batches))

    def __len__(self) -> int:
        return self.n_batches


@dataclass
class ValChunk:
    """Up to ``chunk`` validation images of one subject: the model's input for them."""

    key: str  # subject key
    features: list[torch.Tensor]  # per layer [b, C, h, w]

    def to(self, device: torch.device) -> ValChunk:
        return ValChunk(self.key, [f.to(device, non_blocking=True) for f in self.features])


class ValidationChunks(torch.utils.data.Dataset):
    """Every scored subject's validation images in order, in chunks of ``chunk`` images.

    A subject is scored when it has at least 3 validation images and ground-truth (``own``) voxels; the per-voxel
    correlation needs all of a subject's images together, so the task gathers the chunks of an epoch before scoring.
    """

    def __init__(self, subjects: Sequence[SubjectData], bank: FeatureBank, chunk: int = 64):
        self.scored = [s for s in subjects if s.split_images["val"].size >= 3 and s.own.any()]
        self.bank = bank
        self.items = [(s, start) for s in self.scored for start in range(0, s.split_images["val"].size, chunk)]
        self.chunk = chunk

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> ValChunk:
        s, start = self.items[index]
        return ValChunk(s.key, self.bank.get(s.dataset, s.split_images["val"][start : start + self.chunk]))


class TrainingData(pl.LightningDataModule):
    """The data of one training job: mixed-subject training batches and chunked validation images.

    stores / features: dataset name -> prepared store / feature cache. selection / own: subject key -> voxel
    indices (see :func:`load_subjects`). dark_knowledge: prediction files (see :func:`attach_dark_knowledge`).
    ``seed`` fixes the batches (the model's initialisation is seeded separately). :meth:`setup` loads everything
    once; call it before building the model, which needs the subjects' coordinates and the feature shapes.
    """

    def __init__(
        self,
        stores: Mapping[str, str | Path],
        features: Mapping[str, str | Path],
        batch_size: int,
        max_voxels: int,
        epoch_fraction: float,
        seed: int,
        selection: Mapping[str, np.ndarray] | None = None,
        own: Mapping[str, np.ndarray] | None = None,
        dark_knowledge: Sequence[str | Path] = (),
        num_workers: int = 0,
    ):
        super().__init__()
        self.stores, self.features = dict(stores), dict(features)
        self.selection, self.own, self.dark_knowledge = selection, own, list(dark_knowledge)
        self.batch_size, self.max_voxels, self.epoch_fraction = batch_size, max_voxels, epoch_fraction
        self.seed, self.num_workers = seed, num_workers
        self.subjects: list[SubjectData] = []
        self.bank: FeatureBank | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.bank is not None:
            return
        self.subjects = load_subjects(self.stores, selection=self.selection, own=self.own)
        self.bank = FeatureBank(self.features)
        if self.dark_knowledge:
            attach_dark_knowledge(self.subjects, self.dark_knowledge, {d: self.bank.n_images(d) for d in self.features})

    @property
    def layer_shapes(self) -> list[tuple[int, int, int]]:
        return self.bank.layer_shapes

    @property
    def coords(self) -> dict[str, np.ndarray]:
        """Subject key -> voxel coordinates [n, 3], the model's subjects."""
        return {s.key: s.coords for s in self.subjects}

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        # Under DDP each rank reads its share of every batch (see MixedBatches); one epoch has the same steps.
        trainer = self.trainer
        shard = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batches = MixedBatches(self.subjects, self.bank, self.batch_size, self.max_voxels, seed=self.seed, shard=shard)
        sampler = EpochSampler(batches.n_trials, self.batch_size, self.epoch_fraction)
        return torch.utils.data.DataLoader(
            batches, sampler=sampler, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0
        )

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        chunks = ValidationChunks(self.subjects, self.bank)
        if not chunks.scored:
            raise TrainingDataError("no subject has 3 or more validation images and monitored voxels: cannot checkpoint")
        return torch.utils.data.DataLoader(chunks, batch_size=None)

    def transfer_batch_to_device(self, batch: Batch | ValChunk, device: torch.device, dataloader_idx: int) -> Batch | ValChunk:
        return batch.to(device)

    def batches_per_epoch(self) -> int:
        return epoch_batches(sum(len(s.train_images) for s in self.subjects), self.batch_size, self.epoch_fraction)
