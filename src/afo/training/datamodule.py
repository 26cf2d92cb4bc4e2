"""The data of a training job, as a LightningDataModule: mixed-subject batches and validation chunks — read per batch.

One job describes the chosen voxels of every subject of its stores (:mod:`afo.training.subjects`: indices and
per-voxel vectors only, and where each helper voxel's dark knowledge is) and a feature source
(:mod:`afo.features`: the feature caches, or the stores' images and the backbone on the fly). Nothing is
loaded whole: every training batch (:class:`MixedBatches`, one epoch = :class:`EpochSampler`) and every validation
chunk (:class:`ValidationChunks`) reads its features, trial responses, repeat-averaged targets and dark knowledge
from the files (memory-mapped rows, :mod:`afo.io.rows`), in the DataLoader's worker processes
(``compute.num_workers``). A job's anonymous memory is set by the batch size, ``max_voxels`` and the model, not by
the number of images, trials or subjects (``benchmarks/scale.py`` measures it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from afo.features import FeatureSource, feature_source
from afo.training.lightning import pl
from afo.training.subjects import SubjectData, TrainingDataError, attach_dark_knowledge, load_subjects


@dataclass
class Batch:
    """A mixed-subject training batch: per subject, trial targets and the image rows they saw."""

    features: list[torch.Tensor]  # per layer [B, C, h, w] (on the fly: [uint8 images]), rows grouped in ``parts`` order
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
    ``max_voxels`` of its voxels in that step. Indexed by ``(epoch, i)`` from :class:`EpochSampler`; each item
    reads its rows from the files, so the worker that builds it holds one batch.
    """

    def __init__(
        self,
        subjects: Sequence[SubjectData],
        bank: FeatureSource,
        batch_size: int,
        max_voxels: int,
        seed: int,
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
            voxel = (
                np.sort(rng.choice(n, size=min(n, self.max_voxels), replace=False))
                if n > self.max_voxels
                else np.arange(n)
            )
            trials = picks[(owner == j) & mine] - self._offsets[j]
            if trials.size == 0:
                continue
            images = s.train_images[trials]
            feats.append(self.bank.get(s.dataset, images))
            batch.parts.append((s.key, start, start + trials.size))
            start += trials.size
            batch.targets[s.key] = torch.from_numpy(
                np.ascontiguousarray(s.trial_responses(s.train_trials[trials])[:, voxel])
            )
            batch.voxel_index[s.key] = torch.from_numpy(voxel)
            batch.own[s.key] = torch.from_numpy(s.own[voxel])
            if s.dk is not None:
                batch.dk[s.key] = s.dk.read(images, voxel)
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
    """Up to ``chunk`` validation images of one subject: the model's input and the repeat-averaged targets."""

    key: str  # subject key
    features: list[torch.Tensor]  # per layer [b, C, h, w] (on the fly: [uint8 images])
    targets: torch.Tensor  # float32 [b, n] repeat-averaged responses of the subject's modelled voxels

    def to(self, device: torch.device) -> ValChunk:
        return ValChunk(self.key, [f.to(device, non_blocking=True) for f in self.features], self.targets)


class ValidationChunks(torch.utils.data.Dataset):
    """Every scored subject's validation images in order, in chunks of ``chunk`` images.

    A subject is scored when it has at least 3 validation images and ground-truth (``own``) voxels; the per-voxel
    correlation is accumulated over a subject's chunks (:class:`afo.metrics.PearsonAccumulator`), so no chunk
    outlives its step.
    """

    def __init__(self, subjects: Sequence[SubjectData], bank: FeatureSource, chunk: int = 64):
        self.scored = [s for s in subjects if s.split_images["val"].size >= 3 and s.own.any()]
        self.bank = bank
        self.items = [(s, start) for s in self.scored for start in range(0, s.split_images["val"].size, chunk)]
        self.chunk = chunk

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> ValChunk:
        s, start = self.items[index]
        images = s.split_images["val"][start : start + self.chunk]
        return ValChunk(s.key, self.bank.get(s.dataset, images), torch.from_numpy(s.split_means("val", images)))


class TrainingData(pl.LightningDataModule):
    """The data of one training job: mixed-subject training batches and chunked validation images.

    stores / features: dataset name -> prepared store / feature cache (``{}`` with ``backbone.cache: none``).
    backbone: the config's ``backbone`` section; with ``cache: none`` features are computed from the stores'
    images in each batch, on the trainer's device (:meth:`on_after_batch_transfer`). selection / own: subject key
    -> voxel indices (see :func:`load_subjects`). dark_knowledge: prediction files (see
    :func:`attach_dark_knowledge`). ``seed`` fixes the batches (the model's initialisation is seeded separately).
    :meth:`setup` describes the data once (indices, shapes; nothing is loaded whole); call it before building the
    model, which needs the subjects' coordinates and the feature shapes. Batches are read in ``num_workers``
    DataLoader workers (0: in the training process).
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
        backbone: Mapping | None = None,
    ):
        super().__init__()
        self.stores, self.features = dict(stores), dict(features)
        self.backbone = dict(backbone) if backbone else None
        self.selection, self.own, self.dark_knowledge = selection, own, list(dark_knowledge)
        self.batch_size, self.max_voxels, self.epoch_fraction = batch_size, max_voxels, epoch_fraction
        self.seed, self.num_workers = seed, num_workers
        self.subjects: list[SubjectData] = []
        self.bank: FeatureSource | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.bank is not None:
            return
        self.subjects = load_subjects(self.stores, selection=self.selection, own=self.own)
        self.bank = feature_source(self.stores, self.features, self.backbone)
        if self.dark_knowledge:
            attach_dark_knowledge(self.subjects, self.dark_knowledge)

    def teardown(self, stage: str | None = None) -> None:
        """Close this process's file handles and maps (workers close theirs when they exit)."""
        if self.bank is not None:
            self.bank.close()
        for s in self.subjects:
            s.responses.close()
            for part, _, _ in s.dk.parts if s.dk is not None else ():
                part.pred.close()

    @property
    def layer_shapes(self) -> list[tuple[int, int, int]]:
        return self.bank.layer_shapes

    @property
    def coords(self) -> dict[str, np.ndarray]:
        """Subject key -> voxel coordinates [n, 3], the model's subjects."""
        return {s.key: s.coords for s in self.subjects}

    def _loader(
        self, dataset: torch.utils.data.Dataset, sampler: torch.utils.data.Sampler | None = None
    ) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        # Under DDP each rank reads its share of every batch (see MixedBatches); one epoch has the same steps.
        trainer = self.trainer
        shard = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batches = MixedBatches(self.subjects, self.bank, self.batch_size, self.max_voxels, seed=self.seed, shard=shard)
        return self._loader(batches, EpochSampler(batches.n_trials, self.batch_size, self.epoch_fraction))

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        chunks = ValidationChunks(self.subjects, self.bank)
        if not chunks.scored:
            raise TrainingDataError(
                "no subject has 3 or more validation images and monitored voxels: cannot checkpoint"
            )
        return self._loader(chunks)

    def transfer_batch_to_device(
        self, batch: Batch | ValChunk, device: torch.device, dataloader_idx: int
    ) -> Batch | ValChunk:
        return batch.to(device)

    def on_after_batch_transfer(self, batch: Batch | ValChunk, dataloader_idx: int) -> Batch | ValChunk:
        """The batch's features on its device: read from the caches, or the backbone run on the images (cache none)."""
        batch.features = self.bank.features(batch.features)
        return batch

    def on_device(self, loader: Iterable[Batch | ValChunk], device: torch.device) -> Iterator[Batch | ValChunk]:
        """A loader's batches on ``device`` with their features, outside a trainer (the soup's validation)."""
        for batch in loader:
            yield self.on_after_batch_transfer(batch.to(device), 0)

    def batches_per_epoch(self) -> int:
        return epoch_batches(sum(len(s.train_images) for s in self.subjects), self.batch_size, self.epoch_fraction)
