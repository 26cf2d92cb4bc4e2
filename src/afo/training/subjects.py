"""What a training or prediction job reads about its subjects: voxels, trials, splits and dark knowledge — indices only.

:func:`load_subjects` describes the chosen voxels of every subject of a job's prepared stores (indices and
per-voxel vectors; responses stay in the files and are read per batch through :class:`afo.io.rows.RowReader`);
:func:`attach_dark_knowledge` says where each helper voxel's dark knowledge is. Nothing here imports Lightning,
so prediction and probing jobs that only read subjects start without it.

A *subject key* is ``"<dataset>/<subject>"``, unique across datasets. Every job names the voxels it
models per subject (all usable voxels, or one ROI's); the model's voxel i of a subject is ``voxels[i]``
of the prepared store. Bad voxels (all-NaN, constant) are never modelled.

Targets per image, not per trial: validation and test responses are averaged over the repeats of each
image; dark knowledge is a prediction per image. Training uses single trials (noisy targets), as the paper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from afo.data.repeats import mean_over_repeats
from afo.data.store import SPLIT_CODE, PreparedStore
from afo.errors import UserError
from afo.io.predictions import PredictionPart, prediction_parts
from afo.io.rows import RowReader
from afo.io.tables import subject_key


class TrainingDataError(UserError):
    """The stores, ROI selection or dark-knowledge files of a job do not give it data to train on."""


@dataclass
class DarkKnowledge:
    """Where one subject's dark knowledge is: per prediction file, the model columns it covers (sorted) and their
    columns in the file. :meth:`read` gives a batch's targets; nothing is held but these indices."""

    parts: list[tuple[PredictionPart, np.ndarray, np.ndarray]] = field(default_factory=list)

    def read(self, images: np.ndarray, columns: np.ndarray) -> torch.Tensor:
        """float32 [len(images), len(columns)] for image rows of the dataset and model columns; NaN where none."""
        out = np.full((images.size, columns.size), np.nan, dtype=np.float32)
        for part, model_cols, file_cols in self.parts:
            take = np.flatnonzero(np.isin(columns, model_cols))
            where = np.searchsorted(part.images, images)
            found = np.flatnonzero(
                (where < part.images.size) & (part.images[np.minimum(where, part.images.size - 1)] == images)
            )
            if take.size == 0 or found.size == 0:
                continue
            rows = part.pred.read(where[found])  # [f, n_file] in the file's dtype
            cols = file_cols[np.searchsorted(model_cols, columns[take])]
            out[np.ix_(found, take)] = rows[:, cols]
        return torch.from_numpy(out)


@dataclass
class SubjectData:
    """One subject's data for one job: indices into its files, never its responses.

    Shapes: n = modelled voxels, t = training trials, m = a split's unique images.
    """

    key: str
    dataset: str
    voxels: np.ndarray  # int [n] voxel indices into the prepared store
    coords: np.ndarray  # float32 [n, 3]
    train_trials: np.ndarray  # int [t] response row (in the store) of each training trial
    train_images: np.ndarray  # int [t] image row (in the dataset's store) of each training trial
    split_images: dict[str, np.ndarray]  # split -> int [m] unique image rows (sorted)
    split_trials: dict[str, np.ndarray]  # split -> int [t_split] response rows of the split's trials (ascending)
    trial_image: np.ndarray  # int [n_trials] image row of every trial of the store
    noise_ceiling: np.ndarray  # float32 [n] percent, NaN = unknown
    own: np.ndarray  # bool [n]: ground-truth loss and checkpointing on these voxels (stage 2: the own ROI)
    responses: RowReader  # rows of the store's responses [n_trials, all voxels]
    dk: DarkKnowledge | None = None  # dark knowledge per image (helper voxels' targets), read per batch

    def trial_responses(self, trials: np.ndarray) -> np.ndarray:
        """float32 [len(trials), n]: the modelled voxels' responses on response rows ``trials``."""
        return self.responses.read(trials)[:, self.voxels]

    def split_means(self, split: str, images: np.ndarray | None = None) -> np.ndarray:
        """float32 [m, n] repeat-averaged responses of ``images`` (sorted rows of the split; default all of them).

        Averaged in trial order, exactly as :func:`afo.data.repeats.average_repeats` over the whole split.
        """
        rows = self.split_trials[split]
        if images is not None:
            rows = rows[np.isin(self.trial_image[rows], images)]
        _, means = mean_over_repeats(self.trial_responses, rows, self.trial_image[rows], self.voxels.size)
        return means


def load_subjects(
    stores: Mapping[str, str | Path],
    selection: Mapping[str, np.ndarray] | None = None,
    own: Mapping[str, np.ndarray] | None = None,
) -> list[SubjectData]:
    """Describe every subject of every store (dataset name -> store path); reads indices, never responses.

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
                trial_image = store.trial_image(name)
                split = store.trial_split(name)
                split_trials = {split_name: np.flatnonzero(split == code) for split_name, code in SPLIT_CODE.items()}
                own_mask = np.ones(voxels.size, dtype=bool)
                if own is not None:
                    own_mask = np.isin(voxels, own.get(key, np.empty(0, dtype=np.int64)))
                subjects.append(
                    SubjectData(
                        key=key,
                        dataset=dataset,
                        voxels=voxels,
                        coords=store.coords(name)[voxels],
                        train_trials=split_trials["train"],
                        train_images=trial_image[split_trials["train"]],
                        split_images={k: np.unique(trial_image[rows]) for k, rows in split_trials.items()},
                        split_trials=split_trials,
                        trial_image=trial_image,
                        noise_ceiling=store.noise_ceiling(name)[voxels],
                        own=own_mask,
                        responses=store.response_reader(name),
                    )
                )
    if not subjects:
        raise TrainingDataError("no subject has any selected, usable voxel: check the ROI selection and the stores")
    return subjects


#: Training images whose dark knowledge is checked per block when a job starts.
_DK_CHECK_ROWS = 1024


def attach_dark_knowledge(subjects: Sequence[SubjectData], dk_paths: Sequence[str | Path]) -> None:
    """Point ``subject.dk`` at the dark-knowledge files (see :mod:`afo.io.predictions`) that cover its voxels.

    Each file's checksum is verified, and every helper (not ``own``) voxel must have a finite prediction on every
    training image of its subject; both checks read the files in row blocks.
    """
    by_key = {s.key: s for s in subjects}
    covered = {s.key: np.zeros(s.voxels.size, dtype=bool) for s in subjects}
    for s in subjects:
        s.dk = DarkKnowledge()
    for path in dk_paths:
        for key, part in prediction_parts(path, keys=set(by_key)).items():
            s = by_key[key]
            cols = np.searchsorted(s.voxels, part.voxels)
            keep = (cols < s.voxels.size) & (s.voxels[np.minimum(cols, s.voxels.size - 1)] == part.voxels)
            if not keep.any():
                continue
            model_cols, file_cols = cols[keep], np.flatnonzero(keep)
            order = np.argsort(model_cols)
            model_cols, file_cols = model_cols[order], file_cols[order]
            twice = np.intersect1d(model_cols, np.flatnonzero(covered[key] | _in_parts(s.dk, s.voxels.size)))
            if twice.size:
                raise TrainingDataError(
                    f"{path}: predicts voxel {int(s.voxels[twice[0]])} of {key}, which another "
                    "dark-knowledge file predicts too; give each ROI model's dark knowledge once"
                )
            s.dk.parts.append((part, model_cols, file_cols))
            covered[key][model_cols] = _finite_on(part, np.unique(s.train_images), file_cols)
    for s in subjects:
        uncovered = ~covered[s.key] & ~s.own
        if uncovered.any():
            raise TrainingDataError(
                f"dark knowledge does not cover {int(uncovered.sum())} helper voxel(s) of {s.key} on its training images; "
                "every stage-1 ROI model must dump its predictions"
            )


def _in_parts(dk: DarkKnowledge, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for _, model_cols, _ in dk.parts:
        mask[model_cols] = True
    return mask


def _finite_on(part: PredictionPart, images: np.ndarray, file_cols: np.ndarray) -> np.ndarray:
    """bool [len(file_cols)]: finite on every one of ``images`` (all False when the file lacks one of them)."""
    where = np.searchsorted(part.images, images)
    if images.size and (where.max() >= part.images.size or not np.array_equal(part.images[where], images)):
        return np.zeros(file_cols.size, dtype=bool)
    finite = np.ones(file_cols.size, dtype=bool)
    for start in range(0, where.size, _DK_CHECK_ROWS):
        finite &= np.isfinite(part.pred.read(where[start : start + _DK_CHECK_ROWS])[:, file_cols]).all(0)
    return finite
