"""Repeat averaging: one image's trials reduced to one response per voxel (NaN-aware).

Training targets, dark knowledge, evaluation and decoding all average repeats the same way, here.
"""

from __future__ import annotations

import numpy as np


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
            f"responses must be [n_trials, V] and trial_image [n_trials]; got {responses.shape} and "
            f"{trial_image.shape}"
        )
    images, inverse = np.unique(trial_image, return_inverse=True)
    finite = np.isfinite(responses)
    total = np.zeros((images.size, responses.shape[1]))
    count = np.zeros_like(total)
    np.add.at(total, inverse, np.where(finite, responses, 0.0))
    np.add.at(count, inverse, finite)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return images, mean.astype(np.float32)
