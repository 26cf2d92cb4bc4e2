"""Response preprocessing shared by adapters: z-scoring, beta scaling, and sensor x time coordinates (MEG/EEG).

For MEG / EEG a "voxel" is a sensor x time point; its coordinates place sensors by their scalp layout and time
along the third axis, so the TopyNeck can treat them like cortical positions.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from afo.data.options import AdapterOptionError

#: Options every sensor (MEG / EEG) adapter takes, with their defaults: the subjects, the time window (s) and its
#: decimation (samples averaged per bin), the time axis scale of the coordinates, the validation share and seed
#: of the split, and the big-brain option (all subjects saw the same images).
SENSOR_OPTIONS: dict[str, Any] = {
    "subjects": None,
    "tmin": None,
    "tmax": None,
    "decim": 1,
    "time_mm_per_s": 100.0,
    "val_fraction": 0.06,
    "seed": 0,
    "bigbrain": False,
}


def zscore_rows(block: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """z-score each column of ``block`` [n_trials, n_voxels] over trials, separately within each group
    (e.g. session) of rows. A column that is constant (or all NaN) in a group becomes NaN there: the store
    then treats those trials as missing for that voxel instead of inventing values.
    """
    out = np.empty(block.shape, dtype=np.float32)
    if groups is None:
        groups = np.zeros(block.shape[0], dtype=np.int64)
    for g in np.unique(groups):
        rows = groups == g
        x = block[rows].astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(x, axis=0)
            sd = np.nanstd(x, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rows] = (x - mean) / np.where(sd > 0, sd, np.nan)
    return out


def volume_scale(dtype: np.dtype, scale: Any, what: str) -> float:
    """Factor that turns stored betas into percent signal change.

    'auto': integer betas (NSD's int16 convention) are divided by 300; float betas are already PSC.
    """
    if scale == "auto":
        return 1.0 / 300.0 if np.issubdtype(dtype, np.integer) else 1.0
    try:
        return float(scale)
    except (TypeError, ValueError) as exc:
        raise AdapterOptionError(f"{what}: option scale must be 'auto' or a number, got {scale!r}") from exc


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through ``points`` [n, 3]: (centre [3], radius)."""
    a = np.c_[2 * points, np.ones(len(points))]
    b = (points**2).sum(1)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    centre = sol[:3]
    radius = float(np.sqrt(max(sol[3] + centre @ centre, 1e-12)))
    return centre, radius


def flatten_sensors(positions_mm: np.ndarray) -> np.ndarray:
    """Azimuthal-equidistant projection of sensor positions [n, 3] (mm) onto a plane [n, 2] (mm).

    The sensors are taken to lie on a sphere (fitted); each is mapped to the plane at its great-circle
    distance from the sphere's top along its azimuth, as EEG/MEG topographic maps do. Distances along the
    scalp/helmet are kept (exactly from the vertex, closely elsewhere), so neighbouring sensors stay neighbours.
    With fewer than 4 sensors (no sphere to fit) the x, y positions are returned as they are.
    """
    positions_mm = np.asarray(positions_mm, dtype=np.float64)
    if len(positions_mm) < 4 or np.linalg.matrix_rank(positions_mm - positions_mm.mean(0)) < 3:
        return positions_mm[:, :2].copy()
    centre, radius = fit_sphere(positions_mm)
    d = positions_mm - centre
    r = np.linalg.norm(d, axis=1)
    theta = np.arccos(np.clip(d[:, 2] / np.where(r > 0, r, 1), -1, 1))  # angle from +z (the top of the head)
    phi = np.arctan2(d[:, 1], d[:, 0])
    arc = radius * theta
    return np.c_[arc * np.cos(phi), arc * np.sin(phi)]


def sensor_time_coords(positions_mm: np.ndarray, times_s: np.ndarray, mm_per_s: float) -> np.ndarray:
    """Coordinates [n_sensors * n_times, 3] of sensor x time voxels (sensor-major: voxel = s * n_times + t).

    x, y: the sensor's flattened position (mm, :func:`flatten_sensors`); z: time x ``mm_per_s``. Neighbouring
    time points of one sensor are therefore neighbours along z (10 ms = 1 mm at the default 100 mm/s, well
    below the ~20-40 mm between sensors), and the sensors keep their scalp layout in every time slice.
    """
    xy = flatten_sensors(positions_mm)
    n_s, n_t = len(xy), len(times_s)
    coords = np.empty((n_s, n_t, 3), dtype=np.float32)
    coords[:, :, :2] = xy[:, None, :]
    coords[:, :, 2] = np.asarray(times_s, dtype=np.float64)[None, :] * mm_per_s
    return coords.reshape(n_s * n_t, 3)


def time_window(times: np.ndarray, tmin: float | None, tmax: float | None, decim: int, what: str) -> np.ndarray:
    """Indices [n_bins, decim] of the samples in [tmin, tmax], grouped into bins of ``decim`` samples
    (a trailing partial bin is dropped). The bins are averaged: a boxcar low-pass before subsampling, so
    decimating does not alias high frequencies into the kept samples.
    """
    if int(decim) != decim or decim < 1:
        raise AdapterOptionError(f"{what}: option decim must be a positive integer, got {decim!r}")
    decim = int(decim)
    times = np.asarray(times, dtype=np.float64)
    lo = -np.inf if tmin is None else float(tmin) - 1e-9
    hi = np.inf if tmax is None else float(tmax) + 1e-9
    idx = np.flatnonzero((times >= lo) & (times <= hi))
    n_bins = idx.size // decim
    if n_bins == 0:
        raise AdapterOptionError(
            f"{what}: the time window tmin={tmin}, tmax={tmax} with decim={decim} keeps no sample "
            f"(data span {times[0]:.3f} to {times[-1]:.3f} s)"
        )
    return idx[: n_bins * decim].reshape(n_bins, decim)


def apply_window(data: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """data [..., n_times] -> [..., n_bins]: the mean of each bin of samples."""
    return data[..., bins].mean(axis=-1)
