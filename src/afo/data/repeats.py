"""Repeat averaging: one image's trials reduced to one response per voxel (NaN-aware).

Training targets, dark knowledge, evaluation and decoding all average repeats the same way, here. Trials may come
in row blocks (:class:`RepeatMeans`, :func:`mean_over_repeats`), so a split of any size is averaged in bounded
memory; blocks in trial order give bit-for-bit the result of one call on all trials.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Trials read per block by :func:`mean_over_repeats` (a block is [this, n_voxels] float32).
TRIAL_BLOCK = 1024


class RepeatMeans:
    """Accumulates single-trial responses into per-image means, block by block.

    ``images``: the sorted unique image ids [m] the means are for; ``n_voxels``: V. Trials of other images are
    an error (a bug in the caller's row selection).
    """

    def __init__(self, images: np.ndarray, n_voxels: int):
        self.images = np.asarray(images)
        self._total = np.zeros((self.images.size, n_voxels))
        self._count = np.zeros_like(self._total)

    def add(self, responses: np.ndarray, trial_image: np.ndarray) -> None:
        """responses [t, V] of trials showing ``trial_image`` [t]."""
        where = np.searchsorted(self.images, trial_image)
        if trial_image.size and (
            where.max() >= self.images.size or not np.array_equal(self.images[where], trial_image)
        ):
            raise ValueError("RepeatMeans.add: a trial shows an image outside the images being averaged")
        finite = np.isfinite(responses)
        np.add.at(self._total, where, np.where(finite, responses, 0.0))
        np.add.at(self._count, where, finite)

    def mean(self) -> np.ndarray:
        """float32 [m, V]; NaN where an image has no finite value for a voxel."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self._total / self._count).astype(np.float32)


def average_repeats(responses: np.ndarray, trial_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Repeat-averaged responses: (images [n_images], mean [n_images, V] float32), NaN-aware.

    Args:
        responses: [n_trials, V] single-trial responses (NaN = masked).
        trial_image: [n_trials] image id of each trial.

    Returns:
        the sorted unique image ids and, per image, the mean over its trials of each voxel's finite values
        (NaN where an image has no finite value for a voxel).
    """
    responses = np.asarray(responses)
    trial_image = np.asarray(trial_image)
    if responses.ndim != 2 or trial_image.shape != (responses.shape[0],):
        raise ValueError(
            f"responses must be [n_trials, V] and trial_image [n_trials]; got {responses.shape} and {trial_image.shape}"
        )
    means = RepeatMeans(np.unique(trial_image), responses.shape[1])
    means.add(responses, trial_image)
    return means.images, means.mean()


def mean_over_repeats(
    read: Callable[[np.ndarray], np.ndarray],
    trial_rows: np.ndarray,
    trial_image: np.ndarray,
    n_voxels: int,
    block: int = TRIAL_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`average_repeats` of the trials ``trial_rows`` [t] (showing ``trial_image`` [t]), read in blocks.

    ``read(rows)`` returns the responses [len(rows), n_voxels] of trial rows (e.g. a store's rows, some voxels);
    only one block of trials is in memory at a time, so the cost is the result [m, n_voxels].
    """
    trial_rows, trial_image = np.asarray(trial_rows), np.asarray(trial_image)
    means = RepeatMeans(np.unique(trial_image), n_voxels)
    for start in range(0, trial_rows.size, block):
        means.add(read(trial_rows[start : start + block]), trial_image[start : start + block])
    return means.images, means.mean()
