"""EEG-like subjects: channels x time points as voxels, a few visual sources, low SNR.

Five sources, each with a per-image drive, a scalp topography (a Gaussian over electrode positions around a
focus, with a polarity) and a temporal profile (a Gaussian bump at its latency):

====================  =====================================================  ================  ==========
source                drive                                                  focus             latency
====================  =====================================================  ================  ==========
low_left / low_right  contrast energy in a broad RF in the left / right       contralateral     100 ms
                      hemifield (u_x = -/+0.45, sigma 0.35)                  occipital (O2/O1)
orientation           x- minus y-gradient energy in a central RF           Oz                140 ms
high_a / high_b       presence of random mixtures of categories / colours    P7+P8 / Pz        180 / 350 ms
====================  =====================================================  ================  ==========

The summed signal is scaled so that the strongest channel x time point has SD 1; sensor noise has SD
1/eeg_snr (x a per-channel factor), so each voxel's SNR follows its signal: about nothing at 0 ms, highest at the
peaks. (Unlike fMRI voxels, EEG voxels are not z-scored before noise: a pre-onset time point has no signal to
scale up.) Subjects differ in latencies, amplitudes and topographies.

Coordinates: x, y = the channel's position (mm, mne's standard 10-20 montage, x right, y anterior); z = latency
(ms) x ``eeg_mm_per_ms``. The channel's full 3-D position is in ground_truth.csv (ch_x, ch_y, ch_z).
ROIs: latency windows ``EEG_early`` (< 150 ms), ``EEG_mid`` (150-250 ms), ``EEG_late`` (>= 250 ms); ``MEG_*`` for MEG-like
subjects, which differ only in their sensors, ``eeg_topo_sigma_mm`` (the skull smears magnetic fields less than
potentials, so MEG topographies are more focal) and SNR.

ground_truth.csv columns: voxel, area (= the ROI), level and dominant_source (the source with the largest share
of the voxel's signal), u_x, u_y, rf_size (the sources' RFs weighted by their shares; the high-level sources count
as centred with sigma 1), snr, nc_true (for eeg_test_repeats trials), channel, time_s, ch_x, ch_y, ch_z (mm).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from afo.simulate.config import SimulationConfig
from afo.simulate.fmri import SubjectData, gaussian_rf_weights, trial_schedule
from afo.simulate.stimuli import Stimuli

# name, level, RF centre (u_x, u_y), RF sigma, focus channels, polarity, latency (s), width (s)
_SOURCES = (
    ("low_left", 0, (-0.45, 0.0), 0.35, ("O2", "PO8"), 1.0, 0.100, 0.035),
    ("low_right", 0, (0.45, 0.0), 0.35, ("O1", "PO7"), 1.0, 0.100, 0.035),
    ("orientation", 0, (0.0, 0.0), 0.5, ("Oz",), -0.8, 0.140, 0.040),
    ("high_a", 2, (0.0, 0.0), 1.0, ("P7", "P8"), -1.0, 0.180, 0.050),
    ("high_b", 2, (0.0, 0.0), 1.0, ("Pz",), 1.0, 0.350, 0.110),
)
# ROI labels: latency windows, prefixed with the modality (EEG_early, MEG_early, ...).
ROI_WINDOWS = ((0.150, "early"), (0.250, "mid"), (np.inf, "late"))


def montage_positions() -> dict[str, np.ndarray]:
    """Channel name -> position [3] (mm, head frame: x right, y anterior, z up) of mne's standard 10-20 montage."""
    import mne  # imported here: mne is slow to import and only EEG subjects need it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "standard_1020" is being renamed in newer mne
        kinds = mne.channels.get_builtin_montages()
        montage = mne.channels.make_standard_montage("colin27_1020" if "colin27_1020" in kinds else "standard_1020")
    return {name: 1000.0 * np.asarray(p) for name, p in montage.get_positions()["ch_pos"].items()}


def check_channels(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The montage positions, after checking that every channel name is in it (ValueError naming the others)."""
    montage = montage_positions()
    missing = [n for n in names if n not in montage]
    if missing:
        raise ValueError(
            f"config key `eeg_channels`: {missing} not in the standard 10-20 montage; e.g. {sorted(montage)[:8]}"
        )
    return montage


def simulate_eeg_subject(
    config: SimulationConfig, stim: Stimuli, image_split: np.ndarray, rng: np.random.Generator, modality: str = "eeg"
) -> SubjectData:
    """One EEG-like (or MEG-like: ``modality`` only names the ROIs) subject (see the module docstring)."""
    names = config.eeg_channels
    montage = check_channels(names)
    pos = np.array([montage[n] for n in names])  # [C, 3]
    times = np.linspace(0.0, config.eeg_tmax, config.eeg_n_times)
    n_img = stim.local.shape[0]
    flat = stim.local.reshape(n_img, stim.local.shape[1], -1)
    ori = {n: i for i, n in enumerate(stim.local_names)}

    drives, topos, courses = [], [], []
    for name, _level, (cx, cy), sig, focus, polarity, latency, width in _SOURCES:
        w_rf = gaussian_rf_weights(np.array([cx]), np.array([cy]), np.array([sig]), config.feature_grid)[:, 0]
        if name.startswith("low"):
            d = np.sqrt(flat[:, 0] @ w_rf)
        elif name == "orientation":
            d = (flat[:, ori["orient_0"]] - flat[:, ori["orient_90"]]) @ w_rf
        else:
            d = stim.global_ @ rng.dirichlet(np.full(stim.global_.shape[1], 0.5))
        drives.append((d - d.mean()) / (d.std() + 1e-12))
        # One Gaussian bump per focus electrode (two for the bilateral source), jittered per subject.
        topo = sum(
            np.exp(-((pos - montage[f] - rng.normal(0, 5.0, 3)) ** 2).sum(1) / (2 * config.eeg_topo_sigma_mm**2))
            for f in focus
        )
        topos.append(polarity * np.exp(rng.normal(0, 0.2)) * topo)
        lat = latency + rng.normal(0, 0.008)
        courses.append(np.exp(-((times - lat) ** 2) / (2 * width**2)))
    drives, topos, courses = np.array(drives), np.array(topos), np.array(courses)  # [S, n], [S, C], [S, T]

    # signal[n, c, t] = sum_s drive[s, n] topo[s, c] course[s, t]; voxel = channel-major (c * T + t)
    loading = (topos[:, :, None] * courses[:, None, :]).reshape(len(_SOURCES), -1)  # [S, C*T]
    signal = drives.T @ loading
    signal /= signal.std(0).max()
    noise_sd = np.repeat(np.exp(rng.normal(0, 0.15, len(names))) / config.eeg_snr, times.size)
    snr = signal.std(0) / noise_sd

    trials = trial_schedule(image_split, config.eeg_test_repeats, rng)
    responses = (signal[trials] + rng.standard_normal((trials.size, signal.shape[1])) * noise_sd).astype(np.float32)

    ch = np.repeat(np.arange(len(names)), times.size)
    t = np.tile(times, len(names))
    coords = np.stack([pos[ch, 0], pos[ch, 1], 1000.0 * t * config.eeg_mm_per_ms], axis=1).astype(np.float32)
    rois = np.array([f"{modality.upper()}_" + next(label for edge, label in ROI_WINDOWS if tt < edge) for tt in t])
    # Ground truth "RF" of a channel x time point: the sources' RFs weighted by their share of its signal.
    share = np.abs(loading)  # drives have unit SD, so |loading| is each source's signal SD in the voxel
    share = share / np.maximum(share.sum(0), 1e-12)
    centre = np.array([s[2] for s in _SOURCES])
    dominant = share.argmax(0)
    n_rep = config.eeg_test_repeats
    truth = pd.DataFrame({
        "voxel": np.arange(ch.size), "area": rois, "level": np.array([s[1] for s in _SOURCES])[dominant],
        "u_x": share.T @ centre[:, 0], "u_y": share.T @ centre[:, 1], "rf_size": share.T @ np.array([s[3] for s in _SOURCES]),
        "snr": snr, "nc_true": 100 * snr**2 / (snr**2 + 1 / n_rep),
        "channel": np.array(names)[ch], "time_s": t, "dominant_source": np.array([s[0] for s in _SOURCES])[dominant],
        "ch_x": pos[ch, 0], "ch_y": pos[ch, 1], "ch_z": pos[ch, 2],
    })  # fmt: skip
    return SubjectData(responses, trials, coords, rois, truth)
