"""Noise ceiling from repeated presentations (the NSD method, Allen et al. 2022).

For each voxel: z-score the responses of the repeated images over trials, take the noise variance as the
mean over images of the variance over repeats (ddof=1), the signal variance as 1 - noise variance (clipped
at 0), ncsnr = signal_sd / noise_sd, and NC = 100 * ncsnr^2 / (ncsnr^2 + mean(1/n)), where n is the number
of trials averaged per test image (the NSD correction for unequal repeat counts).
"""

from __future__ import annotations

import warnings

import numpy as np

from afo.errors import InputError

FRACTION_MIN_NONZERO = 5
"""More non-zero values than this, all within [0, 1], read as a fraction (0-1) rather than as percent."""


class NoiseCeilingError(InputError):
    """A given noise ceiling is not in percent (0-100)."""


def check_percent(nc: np.ndarray, source: str) -> None:
    """Refuse a noise ceiling [n_voxels] that is not in percent (0-100; NaN = unknown).

    A fraction (0-1) would make every normalised score 100 times too large, so finite values that all lie in
    [0, 1] with more than :data:`FRACTION_MIN_NONZERO` of them non-zero are refused as a fraction; values above
    100, below 0, or infinite cannot be percentages at all. ``source`` names the file (or the adapter's data).
    """
    nc = np.asarray(nc, dtype=np.float64)
    if np.isinf(nc).any():
        raise NoiseCeilingError(
            f"{source}: {int(np.isinf(nc).sum())} value(s) are inf. Fix: use NaN for an unknown noise ceiling"
        )
    finite = nc[np.isfinite(nc)]
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    if low < 0 or high > 100:
        raise NoiseCeilingError(
            f"{source}: values span {low:g} to {high:g}, outside the 0-100 of a percentage. "
            "Fix: give the noise ceiling in percent of explainable variance (0-100), NaN where unknown"
        )
    if high <= 1 and np.count_nonzero(finite) > FRACTION_MIN_NONZERO:
        raise NoiseCeilingError(
            f"{source}: every value lies in [0, 1] (max {high:g}): this reads as a fraction, but the noise ceiling is "
            "in percent (0-100). Fix: multiply it by 100"
        )


def ncsnr_to_nc(ncsnr: np.ndarray, n_avg: float | np.ndarray) -> np.ndarray:
    """Percent explainable variance of an n-trial average, from the noise-ceiling SNR.

    ``n_avg`` may be a number or an array of per-image trial counts (then mean(1/n) is used).
    """
    inv_n = np.mean(1.0 / np.asarray(n_avg, dtype=np.float64))
    ncsnr = np.asarray(ncsnr, dtype=np.float64)
    return 100.0 * ncsnr**2 / (ncsnr**2 + inv_n)


def ncsnr_from_repeats(data: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """ncsnr per voxel from trials [n_trials, n_voxels] grouped by image id ``groups`` [n_trials].

    Only groups with at least two finite trials count; NaN where a voxel has no such group.
    """
    data = np.asarray(data, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN voxels give NaN, by design
        mean = np.nanmean(data, axis=0)
        sd = np.nanstd(data, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (data - mean) / np.where(sd > 0, sd, np.nan)
    _, inverse = np.unique(groups, return_inverse=True)
    n_groups = inverse.max() + 1
    finite = np.isfinite(z)
    zf = np.where(finite, z, 0.0)
    count = np.zeros((n_groups, data.shape[1]))
    total = np.zeros_like(count)
    total_sq = np.zeros_like(count)
    np.add.at(count, inverse, finite)
    np.add.at(total, inverse, zf)
    np.add.at(total_sq, inverse, zf**2)
    usable = count >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (total_sq - total**2 / count) / (count - 1)
    var = np.where(usable, var, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # voxels without any usable repeat -> NaN
        noise_var = np.nanmean(var, axis=0)
    noise_sd = np.sqrt(noise_var)
    signal_sd = np.sqrt(np.clip(1.0 - noise_var, 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return signal_sd / noise_sd


def noise_ceiling_from_repeats(
    responses, trial_image: np.ndarray, trial_split: np.ndarray, voxel_chunk: int = 1024
) -> np.ndarray:
    """NC (%) per voxel for the average of the test repeats; all NaN when no image is repeated.

    ``responses`` is an array or h5py dataset [n_trials, n_voxels]; it is read in blocks of voxel columns
    (contiguous reads, then the repeated images' trials kept), so memory stays bounded for NSD-sized subjects.
    """
    n_voxels = responses.shape[1]
    images, counts = np.unique(trial_image, return_counts=True)
    repeated = images[counts >= 2]
    if repeated.size == 0:
        return np.full(n_voxels, np.nan, dtype=np.float32)
    rows = np.flatnonzero(np.isin(trial_image, repeated))
    groups = trial_image[rows]
    # The score is computed on test images averaged over their repeats: correct for that many trials.
    test_images = np.unique(trial_image[trial_split == 2])
    test_counts = counts[np.isin(images, test_images)] if test_images.size else counts[counts >= 2]
    nc = np.empty(n_voxels, dtype=np.float32)
    for start in range(0, n_voxels, voxel_chunk):
        block = responses[:, start : start + voxel_chunk][rows]
        nc[start : start + voxel_chunk] = ncsnr_to_nc(ncsnr_from_repeats(block, groups), test_counts)
    return nc
