"""fMRI-like subjects: a flattened patch of visual cortex with a retinotopic map and a feature hierarchy.

Layout. The areas (early to late) are adjacent strips on a cortical sheet, each ``grid = (across, along)``
voxels at ``voxel_mm`` spacing; the sheet is folded (a sine in depth) and placed in the subject's space by a
random rigid transform, so coordinates look like native-space mm, not a grid.

Retinotopy. Along the strips, position maps to horizontal position u_x, the same in every area, so iso-u_x
lines cross the borders; across a strip, position maps to vertical position u_y, with the direction reversed in
every other area: at each border the map is mirrored (the field-sign reversal between V1, V2, V3). Each area
covers ``[-field_extent, field_extent]``; later areas cover less and crowd the fovea. Per subject the map is
rotated, scaled and shifted a little and smoothly warped; per voxel the centre scatters by ``rf_scatter``.
RF sigma grows with eccentricity (from ``rf_sigma[0]`` at the fovea to ``rf_sigma[1]`` at the field's edge).

Response. For voxel v and image i the drive is a weighted sum of four non-negative components, each scaled to
unit SD over images: RF-weighted contrast energy, RF-weighted orientation energy (weak voxel bias to a random
orientation: 2 mm voxels average over orientation columns), RF-weighted coverage of the preferred shapes /
colours, and global presence of the same preferred shapes / colours. Preferences are smooth over cortex
(category patches). Then a compressive exponent (CSS), a per-voxel z-score over images, and Gaussian trial
noise with SD 1/snr (snr log-uniform per voxel within the area's range).

ground_truth.csv columns: voxel, area, level (0 low, 1 mid, 2 high), u_x, u_y (RF centre), rf_size (RF sigma,
u units), snr, nc_true (the noise ceiling, %, that snr implies for the mean of n_test_repeats trials), w_contrast,
w_orientation, w_local, w_global (shares of the drive), pref_orientation_deg, pref_feature (preferred category or
colour), css_exponent, cortex_x_mm / cortex_y_mm (position on the flat sheet), all_nan. For high-level voxels the
global share dominates, so their u and rf_size describe only the (weak, broad, foveal) local part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from afo.simulate.config import SimulationConfig
from afo.simulate.stimuli import ORIENTATIONS_DEG, Stimuli, pixel_centres

_FOLD_MM = (3.0, 30.0)  # amplitude and period of the cortical fold


@dataclass(frozen=True)
class SubjectData:
    """One simulated subject, ready to write as a folder-dataset subject.

    responses: float32 [n_trials, n_voxels]; trial_image: int [n_trials] (index into the stimuli);
    coords: float32 [n_voxels, 3] (mm); rois: str [n_voxels]; ground_truth: one row per voxel.
    """

    responses: np.ndarray
    trial_image: np.ndarray
    coords: np.ndarray
    rois: np.ndarray
    ground_truth: pd.DataFrame


def gaussian_rf_weights(ux: np.ndarray, uy: np.ndarray, sigma: np.ndarray, grid: int) -> np.ndarray:
    """RF weights [grid*grid, n_voxels] of isotropic Gaussians, row-major over (row = u_y, column = u_x).

    Normalised by the full Gaussian integral, not by the part inside the image: what falls outside the image
    is blank (zero energy), so RFs at the edge are driven less, as they would be by a real screen.
    """
    c = pixel_centres(grid)
    gx = np.exp(-((c[:, None] - ux[None]) ** 2) / (2 * sigma**2))  # [grid, V]
    gy = np.exp(-((c[:, None] - uy[None]) ** 2) / (2 * sigma**2))
    cell = (2.0 / grid) ** 2
    w = gy[:, None, :] * gx[None, :, :] * (cell / (2 * np.pi * sigma**2))  # [grid(row), grid(col), V]
    return w.reshape(grid * grid, -1).astype(np.float32)


def trial_schedule(image_split: np.ndarray, n_repeats: int, rng: np.random.Generator) -> np.ndarray:
    """Image index of each trial [n_trials]: train/val images once, test images ``n_repeats`` times, shuffled.

    ``image_split`` [n_images] holds "train" | "val" | "test".
    """
    test = np.flatnonzero(image_split == "test")
    once = np.flatnonzero(image_split != "test")
    trials = np.concatenate([once, np.repeat(test, n_repeats)])
    return trials[rng.permutation(trials.size)]


def _layout(config: SimulationConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Voxels kept by this subject: area index, position across/along its strip (0..1) and flat cortex (mm)."""
    rows = []
    x0 = 0.0
    for k, area in enumerate(config.areas):
        n_across, n_along = area.grid
        j, i = np.meshgrid(np.arange(n_across), np.arange(n_along), indexing="ij")
        a = (j.ravel() + 0.5) / n_across
        b = (i.ravel() + 0.5) / n_along
        keep = rng.random(a.size) >= config.voxel_dropout
        keep[rng.integers(a.size)] = True  # never an empty area
        rows.append(pd.DataFrame({
            "area_index": k, "across": a[keep], "along": b[keep],
            "flat_x": x0 + (j.ravel()[keep] + 0.5) * config.voxel_mm, "flat_y": (i.ravel()[keep] + 0.5) * config.voxel_mm,
        }))  # fmt: skip
        x0 += n_across * config.voxel_mm
    return pd.concat(rows, ignore_index=True)


def _smooth_field(xy: np.ndarray, n_fields: int, length_mm: float, rng: np.random.Generator) -> np.ndarray:
    """[n_voxels, n_fields] Gaussian random fields over cortex, smoothed at ``length_mm``, unit SD per field."""
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    f = np.exp(-d2 / (2 * length_mm**2)) @ rng.standard_normal((xy.shape[0], n_fields))
    return (f - f.mean(0)) / (f.std(0) + 1e-12)


def _retinotopy(config: SimulationConfig, vox: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """True RF centres (u_x, u_y) per voxel: the mirrored strip map, then the subject's transform and warp."""
    extent = np.array([a.field_extent for a in config.areas])[vox.area_index]
    mirror = np.where(vox.area_index.to_numpy() % 2 == 0, 1.0, -1.0)
    ux = extent * (2 * vox.along.to_numpy() - 1)
    uy = extent * mirror * (2 * vox.across.to_numpy() - 1)
    rot = np.deg2rad(rng.normal(0, config.map_rotation_deg))
    scale = rng.uniform(0.95, 1.03)
    shift = rng.normal(0, config.map_shift, size=2)
    ux, uy = scale * (np.cos(rot) * ux - np.sin(rot) * uy), scale * (np.sin(rot) * ux + np.cos(rot) * uy)
    # A smooth, low-frequency warp of the map (anatomy is never a perfect rectangle), then scatter per voxel.
    warp = _smooth_field(vox[["flat_x", "flat_y"]].to_numpy(), 2, 6.0 * config.voxel_mm, rng)
    ux = ux + shift[0] + 0.03 * warp[:, 0] + rng.normal(0, config.rf_scatter, ux.size)
    uy = uy + shift[1] + 0.03 * warp[:, 1] + rng.normal(0, config.rf_scatter, uy.size)
    return np.clip(ux, -0.95, 0.95), np.clip(uy, -0.95, 0.95)


def _coords(config: SimulationConfig, vox: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Subject-space mm [n_voxels, 3]: the folded sheet under a random rotation and translation."""
    x, y = vox.flat_x.to_numpy(), vox.flat_y.to_numpy()
    z = _FOLD_MM[0] * np.sin(2 * np.pi * x / _FOLD_MM[1]) + rng.normal(0, 0.1 * config.voxel_mm, x.size)
    p = np.stack([x - x.mean(), y - y.mean(), z], axis=1)
    # Random rotation: mostly about z (in-plane), a little tilt, as between subjects' native spaces.
    angles = rng.normal(0, [0.15, 0.15, 0.6])
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        p = p @ r.T
    return (p + rng.normal([0, -80, 0], 5.0)).astype(np.float32)


def _unit_sd(x: np.ndarray) -> np.ndarray:
    """Scale each column of [n_images, V] to unit SD (columns with no variance left at 0)."""
    sd = x.std(axis=0)
    return np.where(sd > 1e-12, x / np.where(sd > 1e-12, sd, 1.0), 0.0)


def _individual(
    config: SimulationConfig, stim: Stimuli, vox: pd.DataFrame, ux: np.ndarray, uy: np.ndarray, rng: np.random.Generator
) -> dict:
    """One individual's RFs, feature weights, preferences, noise-free signal [n_images, V] (unit SD) and snr [V]."""
    n_vox = len(vox)
    areas = [config.areas[k] for k in vox.area_index]
    ecc = np.sqrt(ux**2 + uy**2)
    extent = np.array([max(a.field_extent, 0.1) for a in areas])
    lo, hi = np.array([a.rf_sigma for a in areas]).T
    sigma = (lo + (hi - lo) * np.clip(ecc / (extent * np.sqrt(2)), 0, 1)) * np.exp(rng.normal(0, 0.08, n_vox))

    # Per-voxel share of each drive component: the area's, jittered, renormalised.
    weights = np.array([a.weights for a in areas]) * np.exp(rng.normal(0, 0.25, (n_vox, 4)))
    weights /= weights.sum(axis=1, keepdims=True)
    pref_ori = rng.uniform(0, 180, n_vox)
    tuning = np.exp(1.0 * np.cos(2 * np.deg2rad(np.array(ORIENTATIONS_DEG)[None, :] - pref_ori[:, None])))  # [V, 4]
    tuning /= tuning.sum(axis=1, keepdims=True)
    # Smooth preference fields over cortex give category / colour patches (as face or colour patches).
    flat = vox[["flat_x", "flat_y"]].to_numpy()
    pref = np.exp(2.5 * _smooth_field(flat, len(stim.global_names), 2.0 * config.voxel_mm, rng))
    pref /= pref.sum(axis=1, keepdims=True)  # [V, n_global]

    w_rf = gaussian_rf_weights(ux, uy, sigma, config.feature_grid)  # [G*G, V]
    # One contiguous (images x maps, cells) @ (cells, voxels) product: a single BLAS call for every map.
    n_img, n_maps = stim.local.shape[:2]
    pooled = (stim.local.reshape(n_img * n_maps, -1) @ w_rf).reshape(n_img, n_maps, n_vox)
    ori_idx, sem_idx = stim.local_index("orient_"), np.concatenate([stim.local_index("cat_"), stim.local_index("col_")])
    contrast = pooled[:, 0]  # [n_img, V]
    orient = np.einsum("nkv,vk->nv", pooled[:, ori_idx], tuning)
    local_sem = np.einsum("nkv,vk->nv", pooled[:, sem_idx], pref)
    global_sem = stim.global_ @ pref.T
    parts = [_unit_sd(p.astype(np.float64)) for p in (contrast, orient, local_sem, global_sem)]
    drive = sum(weights[:, k] * parts[k] for k in range(4))
    css = np.array([a.css_exponent for a in areas])
    signal = drive**css
    signal = (signal - signal.mean(0)) / np.where(signal.std(0) > 0, signal.std(0), 1.0)

    snr_lo, snr_hi = np.array([a.snr for a in areas]).T
    snr = np.exp(rng.uniform(np.log(snr_lo), np.log(snr_hi)))
    return {"ux": ux, "uy": uy, "sigma": sigma, "weights": weights, "pref_ori": pref_ori, "pref": pref,
            "css": css, "signal": signal, "snr": snr}  # fmt: skip


def simulate_fmri_subject(
    config: SimulationConfig, stim: Stimuli, image_split: np.ndarray, rng: np.random.Generator, n_average: int = 1
) -> SubjectData:
    """One fMRI-like subject (see the module docstring for the model).

    ``n_average`` > 1: a group average (HCP's group-average data) of that many individuals on this subject's
    voxel grid. Each individual has its own retinotopic map, RFs, feature weights and preferences; the subject's
    signal is their mean and its trial noise the mean of their independent noises (SD / sqrt(n_average) when
    SNRs are equal). Ground truth u, rf_size and weights are then the individuals' means.
    """
    vox = _layout(config, rng)
    n_vox = len(vox)
    areas = [config.areas[k] for k in vox.area_index]
    ux, uy = _retinotopy(config, vox, rng)
    coords = _coords(config, vox, rng)
    people = [_individual(config, stim, vox, ux, uy, rng)]
    # Further individuals draw from their own child streams, so that n_average = 1 keeps the single-subject draws.
    for child in rng.spawn(n_average - 1) if n_average > 1 else []:
        cux, cuy = _retinotopy(config, vox, child)
        people.append(_individual(config, stim, vox, cux, cuy, child))
    if n_average == 1:
        signal, snr = people[0]["signal"], people[0]["snr"]
        noise_sd = 1.0 / snr
    else:
        # Misaligned maps partly cancel: the mean signal has SD < 1, and its SNR is what the average really has.
        signal = np.mean([p["signal"] for p in people], axis=0)
        noise_sd = np.sqrt(np.sum([1.0 / p["snr"] ** 2 for p in people], axis=0)) / n_average
        snr = signal.std(0) / noise_sd
    trials = trial_schedule(image_split, config.n_test_repeats, rng)
    responses = signal[trials] + rng.standard_normal((trials.size, n_vox)) / (snr if n_average == 1 else 1.0 / noise_sd)
    responses = responses.astype(np.float32)
    is_nan = np.zeros(n_vox, dtype=bool)
    if config.nan_voxels:  # drawn last, so the option changes nothing else
        is_nan[rng.choice(n_vox, config.nan_voxels, replace=False)] = True
        responses[:, is_nan] = np.nan

    def mean(key: str) -> np.ndarray:
        return np.mean([p[key] for p in people], axis=0)

    first = people[0]
    flat = vox[["flat_x", "flat_y"]].to_numpy()
    names = np.array([a.name for a in areas])
    n_rep = config.n_test_repeats
    weights = mean("weights")
    truth = pd.DataFrame({
        "voxel": np.arange(n_vox), "area": names, "level": [a.level for a in areas],
        "u_x": mean("ux"), "u_y": mean("uy"), "rf_size": mean("sigma"), "snr": snr, "nc_true": 100 * snr**2 / (snr**2 + 1 / n_rep),
        "w_contrast": weights[:, 0], "w_orientation": weights[:, 1], "w_local": weights[:, 2], "w_global": weights[:, 3],
        "pref_orientation_deg": first["pref_ori"], "pref_feature": np.array(stim.global_names)[mean("pref").argmax(1)],
        "css_exponent": first["css"], "cortex_x_mm": flat[:, 0], "cortex_y_mm": flat[:, 1], "all_nan": is_nan,
    })  # fmt: skip
    return SubjectData(responses, trials, coords, names, truth)
