"""The "big brain" option (paper section 4.1): subjects who saw the same images become one subject.

The paper concatenates the voxels of all ALG, EEG and MEG subjects into one large brain per dataset, which cuts
the number of per-subject necks and heads to one. Here a trial of the big brain is one (image, repetition)
pair: the k-th presentation of an image to subject A sits in the same row as the k-th presentation of that
image to subject B. Where a subject has no k-th presentation of an image, its voxels are NaN on that row (the
store treats NaN as missing), so no data are dropped or invented.

Coordinates: each subject's voxel cloud keeps its own shape and is moved into its own cell of an evenly spaced
grid in the x-y plane (cells as large as the largest subject plus a gap), so subjects never overlap and
neighbours within a subject stay neighbours.

Memory stays bounded: subjects are spooled to a scratch HDF5 file beside the output as they are prepared, and
the big brain is then assembled in chunks of trials.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import h5py
import numpy as np

from afo.data.options import progress
from afo.data.store import SPLIT_CODE, StoreError, StoreWriter, real_float32

SUBJECT_ROI_SET = "subject"


def grid_layout(coords: Sequence[np.ndarray], gap_fraction: float = 0.1) -> list[np.ndarray]:
    """Move each subject's coordinates [n_i, 3] into its own cell of a grid in the x-y plane.

    Cells are ``(1 + gap_fraction)`` times the largest subject extent on each axis; subjects fill the grid
    row by row (ceil(sqrt(n)) columns). Within a cell a subject is shifted so its minimum corner sits at the
    cell's corner (z keeps its own minimum at 0).
    """
    mins = [c.min(0) if len(c) else np.zeros(3) for c in coords]
    extents = np.array([c.max(0) - m if len(c) else np.zeros(3) for c, m in zip(coords, mins)])
    cell = extents.max(0) * (1.0 + gap_fraction)
    cell = np.where(cell > 0, cell, 1.0)  # a flat axis still needs a non-zero step
    n_cols = max(1, math.ceil(math.sqrt(len(coords))))
    placed = []
    for i, (c, m) in enumerate(zip(coords, mins)):
        offset = np.array([(i % n_cols) * cell[0], (i // n_cols) * cell[1], 0.0])
        placed.append((c - m + offset).astype(np.float32))
    return placed


@dataclass
class _Spooled:
    name: str
    n_voxels: int
    trial_image: list[np.ndarray] = field(default_factory=list)
    trial_split: list[np.ndarray] = field(default_factory=list)
    coords: np.ndarray | None = None
    rois: dict[str, Sequence[str]] = field(default_factory=dict)
    noise_ceiling: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    finished: bool = False


class _SpoolWriter:
    """Same interface as :class:`afo.data.store.SubjectWriter`; writes to the scratch file instead."""

    def __init__(self, scratch: h5py.File, record: _Spooled):
        self._record = record
        n = record.n_voxels
        # one row per chunk: the big brain reads rows in another subject's order, so rows must be cheap to pick
        self._ds = scratch.create_dataset(
            record.name, shape=(0, n), maxshape=(None, n), dtype=np.float32, chunks=(1, max(n, 1))
        )

    def append(self, responses: np.ndarray, trial_image: np.ndarray, trial_split) -> None:
        responses = real_float32(responses, f"big brain subject {self._record.name}")  # inf stays: the store reports it
        if responses.ndim != 2 or responses.shape[1] != self._record.n_voxels:
            raise StoreError(f"responses chunk has shape {responses.shape}, expected (n, {self._record.n_voxels})")
        split = np.asarray(trial_split)
        if split.dtype.kind in "US" or split.dtype == object:
            split = np.array([SPLIT_CODE[str(s)] for s in split], dtype=np.int8)
        n0 = self._ds.shape[0]
        self._ds.resize(n0 + len(responses), axis=0)
        self._ds[n0:] = responses
        self._record.trial_image.append(np.asarray(trial_image, dtype=np.int64))
        self._record.trial_split.append(split.astype(np.int8))

    def finish(self, coords, rois=None, noise_ceiling=None, attrs=None) -> dict:
        rec = self._record
        coords = np.asarray(coords, dtype=np.float32)
        if coords.shape != (rec.n_voxels, 3):
            raise StoreError(f"coords has shape {coords.shape}, expected ({rec.n_voxels}, 3)")
        rec.coords = coords
        rec.rois = dict(rois or {})
        rec.noise_ceiling = None if noise_ceiling is None else np.asarray(noise_ceiling, dtype=np.float32)
        rec.attrs = dict(attrs or {})
        rec.finished = True
        return {"n_trials": int(self._ds.shape[0]), "n_voxels": rec.n_voxels, "spooled_for": "bigbrain"}


class BigBrain:
    """Collects subjects through ``subject(name, n_voxels)`` and writes them as one concatenated subject.

    Use as a context manager inside a :class:`StoreWriter` block; on a clean exit the big brain is assembled
    and written, and the scratch file is always removed.
    """

    def __init__(self, writer: StoreWriter, name: str = "bigbrain", gap_fraction: float = 0.1, chunk_rows: int = 256):
        self.writer = writer
        self.name = name
        self.gap_fraction = gap_fraction
        self.chunk_rows = chunk_rows
        self.reports: dict[str, dict] = {}
        self._records: list[_Spooled] = []
        self._scratch_path = writer.path.with_name(f".{writer.path.name}.bigbrain-scratch.h5")
        self._scratch = h5py.File(self._scratch_path, "w")

    def subject(self, name: str, n_voxels: int) -> _SpoolWriter:
        if any(r.name == name for r in self._records):
            raise StoreError(f"subject {name!r} written twice")
        record = _Spooled(name=name, n_voxels=int(n_voxels))
        self._records.append(record)
        return _SpoolWriter(self._scratch, record)

    def __enter__(self) -> BigBrain:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.reports[self.name] = self._assemble()
        finally:
            self._scratch.close()
            if self._scratch_path.exists():
                os.unlink(self._scratch_path)

    # -- assembly ---------------------------------------------------------------------------------------------

    def _assemble(self) -> dict:
        records = self._records
        if not records:
            raise StoreError("big brain: no subject was prepared")
        unfinished = [r.name for r in records if not r.finished]
        if unfinished:
            raise StoreError(f"big brain: subjects {unfinished} were never finished")
        keys, rows, key_image, key_split = self._align(records)
        coords = grid_layout([r.coords for r in records], self.gap_fraction)
        offsets = np.cumsum([0] + [r.n_voxels for r in records])
        n_total = int(offsets[-1])
        w = self.writer.subject(self.name, n_total)
        for start in progress(range(0, len(keys), self.chunk_rows), "big brain", unit="chunk"):
            stop = min(start + self.chunk_rows, len(keys))
            block = np.full((stop - start, n_total), np.nan, dtype=np.float32)
            for s, rec in enumerate(records):
                r = rows[s][start:stop]
                have = np.flatnonzero(r >= 0)
                if have.size:
                    wanted = r[have]
                    uniq, inv = np.unique(wanted, return_inverse=True)  # h5py needs increasing indices
                    data = self._scratch[rec.name][uniq]
                    block[have, offsets[s] : offsets[s + 1]] = data[inv]
            w.append(block, key_image[start:stop], key_split[start:stop])
        rois = self._merge_rois(records)
        nc = None
        if all(r.noise_ceiling is not None for r in records):
            nc = np.concatenate([r.noise_ceiling for r in records])
        layout = [
            {
                "subject": r.name,
                "first_voxel": int(offsets[i]),
                "n_voxels": r.n_voxels,
                "n_trials": int(sum(len(t) for t in r.trial_image)),
            }
            for i, r in enumerate(records)
        ]
        attrs = {"bigbrain_subjects": json.dumps(layout), "bigbrain_layout": "grid"}
        report = w.finish(np.concatenate(coords), rois=rois, noise_ceiling=nc, attrs=attrs)
        report["subjects"] = [r.name for r in records]
        return report

    @staticmethod
    def _align(records: list[_Spooled]):
        """Output trials = union of (image, k-th presentation) over subjects, in first-seen order."""
        key_index: dict[tuple[int, int], int] = {}
        key_split: list[int] = []
        per_subject_keys = []
        for rec in records:
            images = np.concatenate(rec.trial_image) if rec.trial_image else np.zeros(0, np.int64)
            splits = np.concatenate(rec.trial_split) if rec.trial_split else np.zeros(0, np.int8)
            seen: dict[int, int] = {}
            keys = []
            for image, split in zip(images.tolist(), splits.tolist()):
                k = seen.get(image, 0)
                seen[image] = k + 1
                key = (image, k)
                if key not in key_index:
                    key_index[key] = len(key_split)
                    key_split.append(split)
                elif key_split[key_index[key]] != split:
                    raise StoreError(
                        f"big brain: image {image} is in different splits for different subjects; "
                        "the subjects must share one split by image"
                    )
                keys.append(key_index[key])
            per_subject_keys.append(np.asarray(keys, dtype=np.int64))
        n_keys = len(key_split)
        rows = []
        for keys in per_subject_keys:
            r = np.full(n_keys, -1, dtype=np.int64)
            r[keys] = np.arange(len(keys))
            rows.append(r)
        key_image = np.empty(n_keys, dtype=np.int64)
        for (image, _), i in key_index.items():
            key_image[i] = image
        return list(key_index), rows, key_image, np.asarray(key_split, dtype=np.int8)

    @staticmethod
    def _merge_rois(records: list[_Spooled]) -> dict[str, list[str]]:
        sets = sorted({s for r in records for s in r.rois})
        merged: dict[str, list[str]] = {}
        for set_name in sets:
            labels: list[str] = []
            for r in records:
                labels.extend(list(map(str, r.rois[set_name])) if set_name in r.rois else [""] * r.n_voxels)
            merged[set_name] = labels
        merged[SUBJECT_ROI_SET] = [r.name for r in records for _ in range(r.n_voxels)]
        return merged


class _RecordingWriter:
    """A store SubjectWriter whose finish() report is kept by the target (for the adapter's report)."""

    def __init__(self, inner, reports: dict[str, dict], name: str):
        self._inner, self._reports, self._name = inner, reports, name

    def append(self, responses, trial_image, trial_split) -> None:
        self._inner.append(responses, trial_image, trial_split)

    def finish(self, coords, rois=None, noise_ceiling=None, attrs=None, layout=None) -> dict:
        self._reports[self._name] = self._inner.finish(
            coords, rois=rois, noise_ceiling=noise_ceiling, attrs=attrs, layout=layout
        )
        return self._reports[self._name]


class DirectTarget:
    """The plain case: subjects go straight into the store (same interface as :class:`BigBrain`)."""

    def __init__(self, writer: StoreWriter):
        self.writer = writer
        self.reports: dict[str, dict] = {}

    def subject(self, name: str, n_voxels: int) -> _RecordingWriter:
        return _RecordingWriter(self.writer.subject(name, n_voxels), self.reports, name)

    def __enter__(self) -> DirectTarget:
        return self

    def __exit__(self, *exc) -> None:
        return None


def subject_target(writer: StoreWriter, bigbrain: bool, name: str = "bigbrain") -> BigBrain | DirectTarget:
    """Where an adapter writes its subjects: the store itself, or a big brain that concatenates them."""
    return BigBrain(writer, name=name) if bigbrain else DirectTarget(writer)
