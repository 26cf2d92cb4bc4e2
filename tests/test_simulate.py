"""The synthetic retinotopic brain: file contract, design, retinotopy, feature dependence, determinism, config."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from afo.data.noise_ceiling import noise_ceiling_from_repeats
from afo.simulate import DEFAULT_AREAS, MANIFEST, AreaSpec, SimulationConfig, simulate

SMALL = dict(n_images=150, image_size=48, feature_grid=16, n_test_images=16, n_fmri_subjects=2, n_eeg_subjects=1,
             eeg_n_times=8, eeg_tmax=0.56)  # fmt: skip
EARLY = ("V1", "V2", "V3")
GT_COLUMNS = {"voxel", "u_x", "u_y", "rf_size", "area", "level", "snr", "nc_true"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> tuple[Path, SimulationConfig, dict]:
    config = SimulationConfig.from_dict(SMALL)
    out = tmp_path_factory.mktemp("sim") / "synthetic"
    return out, config, simulate(out, config)


def load(subject: Path) -> dict:
    return {
        "responses": np.load(subject / "responses.npy"),
        "trials": pd.read_csv(subject / "trials.csv"),
        "coords": np.load(subject / "coords.npy"),
        "rois": pd.read_csv(subject / "rois.csv"),
        "truth": pd.read_csv(subject / "ground_truth.csv"),
    }


def subjects(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("responses.npy"))


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_folder_dataset_contract(sim):
    out, config, report = sim
    assert (out / MANIFEST).is_file() and (out / "stimuli.csv").is_file()
    assert set(report["datasets"]) == {"fmri", "eeg"}
    for modality in ("fmri", "eeg"):
        root = out / modality
        meta = yaml.safe_load((root / "dataset.yaml").read_text())
        assert meta["modality"] == modality and meta["name"] == f"synthetic_{modality}"
        pngs = sorted(p.name for p in (root / "images").glob("*.png"))
        assert len(pngs) == config.n_images
        assert Image.open(root / "images" / pngs[0]).size == (config.image_size, config.image_size)
        found = subjects(root)
        assert len(found) == (config.n_fmri_subjects if modality == "fmri" else config.n_eeg_subjects)
        for subject in found:
            d = load(subject)
            r, trials, coords, rois, truth = d["responses"], d["trials"], d["coords"], d["rois"], d["truth"]
            assert r.dtype == np.float32 and r.ndim == 2 and np.isfinite(r).all()
            assert list(trials.columns) == ["image", "split"] and len(trials) == r.shape[0]
            assert set(trials.split) == {"train", "val", "test"} and set(trials.image) <= set(pngs)
            assert coords.dtype == np.float32 and coords.shape == (r.shape[1], 3) and np.isfinite(coords).all()
            assert list(rois.columns) == ["voxel", "roi"] and (rois.voxel.to_numpy() == np.arange(r.shape[1])).all()
            assert GT_COLUMNS <= set(truth.columns) and len(truth) == r.shape[1]
            assert (truth.area == rois.roi).all()
            assert truth[["u_x", "u_y"]].abs().max().max() <= 1.0 and (truth.rf_size > 0).all()
            assert set(truth.level) <= {0, 1, 2} and truth.nc_true.between(0, 100).all()


def test_repeats_for_test_images_and_splits_by_image(sim):
    out, config, _ = sim
    per_subject_split = []
    for subject in subjects(out):
        trials = load(subject)["trials"]
        counts = trials.image.value_counts()
        split_of = trials.groupby("image").split.agg(set)
        assert (split_of.map(len) == 1).all(), "an image appears in two splits"
        split_of = split_of.map(lambda s: next(iter(s)))
        repeats = config.n_test_repeats if subject.parent.name == "fmri" else config.eeg_test_repeats
        assert (counts[split_of[split_of == "test"].index] == repeats).all()
        assert (counts[split_of[split_of != "test"].index] == 1).all()
        assert (split_of == "test").sum() == config.n_test_images
        assert abs((split_of == "val").mean() - config.val_fraction) < 0.02
        per_subject_split.append(split_of.sort_index())
    # Every subject of every modality shares the split (test images are common to all, as NSD's shared images).
    assert all(s.equals(per_subject_split[0]) for s in per_subject_split)


def early_voxels(subject: Path) -> tuple[pd.DataFrame, np.ndarray]:
    d = load(subject)
    keep = d["truth"].area.isin(EARLY).to_numpy()
    return d["truth"][keep].reset_index(drop=True), d["coords"][keep]


def test_retinotopic_map_is_smooth(sim):
    out, config, _ = sim
    for subject in subjects(out / "fmri"):
        truth, coords = early_voxels(subject)
        u = truth[["u_x", "u_y"]].to_numpy()
        same_area = truth.area.to_numpy()[:, None] == truth.area.to_numpy()[None, :]
        dist_mm = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
        du = np.linalg.norm(u[:, None] - u[None], axis=-1)
        neighbours = same_area & (dist_mm > 0) & (dist_mm < 1.6 * config.voxel_mm)
        pairs = same_area & (dist_mm > 0)
        assert du[neighbours].mean() < 0.35 * du[pairs].mean()
        # RF centre is a smooth (quadratic) function of cortical position within each area.
        for area in EARLY:
            m = (truth.area == area).to_numpy()
            p = coords[m] - coords[m].mean(0)
            design = np.column_stack(
                [np.ones(m.sum()), p, p**2, p[:, [0]] * p[:, [1]], p[:, [0]] * p[:, [2]], p[:, [1]] * p[:, [2]]]
            )
            fit = design @ np.linalg.lstsq(design, u[m], rcond=None)[0]
            r2 = 1 - ((u[m] - fit) ** 2).sum(0) / ((u[m] - u[m].mean(0)) ** 2).sum(0)
            assert (r2 > 0.9).all(), (area, r2)


def test_map_is_mirrored_across_area_borders(sim):
    out, _, _ = sim
    for subject in subjects(out / "fmri"):
        truth, coords = early_voxels(subject)
        # The cortical sheet's plane (first two principal axes), then the field sign of each area's map:
        # the sign of det(d u / d cortex), which flips at every border between V1, V2 and V3.
        centred = coords - coords.mean(0)
        plane = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
        signs = []
        for area in EARLY:
            m = (truth.area == area).to_numpy()
            design = np.column_stack([plane[m], np.ones(m.sum())])
            jac = np.linalg.lstsq(design, truth.loc[m, ["u_x", "u_y"]].to_numpy(), rcond=None)[0][:2]
            signs.append(np.sign(np.linalg.det(jac)))
        assert signs[0] == -signs[1] and signs[1] == -signs[2], signs


def test_hierarchy_rf_size_grows_and_early_maps_cover_field(sim):
    out, _, _ = sim
    truth = load(subjects(out / "fmri")[0])["truth"]
    order = [a.name for a in DEFAULT_AREAS]
    median_size = truth.groupby("area").rf_size.median()[order].to_numpy()
    assert (np.diff(median_size) > 0).all(), median_size
    levels = truth.groupby("area")["level"].first()[order].to_numpy()
    assert levels[0] == 0 and (np.diff(levels) >= 0).all() and levels[-1] == 2
    early = truth[truth.area == "V1"]
    assert early.u_x.min() < -0.6 and early.u_x.max() > 0.6 and early.u_y.min() < -0.6 and early.u_y.max() > 0.6
    assert early.rf_size.max() < 0.35  # compact: sigma under ~9 % of the image width


def contrast_energy(images: np.ndarray) -> np.ndarray:
    """Luminance gradient energy [n, size, size] of uint8 RGB images [n, size, size, 3] (independent of the simulator)."""
    lum = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    gy, gx = np.gradient(lum, axis=(1, 2))
    return gx**2 + gy**2


def test_early_responses_follow_contrast_inside_the_rf(sim):
    out, config, _ = sim
    subject = subjects(out / "fmri")[0]
    d = load(subject)
    names = sorted(p.name for p in (out / "fmri" / "images").glob("*.png"))
    energy = contrast_energy(np.stack([np.asarray(Image.open(out / "fmri" / "images" / n)) for n in names]))
    index = {n: i for i, n in enumerate(names)}
    trial_image = d["trials"].image.map(index).to_numpy()
    c = (np.arange(config.image_size) + 0.5) / config.image_size * 2 - 1

    def pooled(ux: float, uy: float, sigma: float) -> np.ndarray:
        w = np.exp(-((c[None, :] - ux) ** 2 + (c[:, None] - uy) ** 2) / (2 * sigma**2))
        return (energy * w).sum(axis=(1, 2))[trial_image]

    v1 = d["truth"][d["truth"].area == "V1"]
    own, far = [], []
    for _, row in v1.iterrows():
        y = d["responses"][:, int(row.voxel)]
        own.append(np.corrcoef(pooled(row.u_x, row.u_y, row.rf_size), y)[0, 1])
        # the same RF mirrored through the fixation point: same eccentricity, other place
        far.append(np.corrcoef(pooled(-row.u_x, -row.u_y, row.rf_size), y)[0, 1])
    own, far = np.array(own), np.array(far)
    assert np.median(own) > 0.4 and np.median(own) > np.median(far) + 0.3
    ecc = np.hypot(v1.u_x, v1.u_y).to_numpy()
    assert (own[ecc > 0.3] > far[ecc > 0.3]).mean() > 0.9


def test_noise_ceiling_from_repeats_matches_truth_and_varies(sim):
    out, _, _ = sim
    d = load(subjects(out / "fmri")[0])
    image = pd.factorize(d["trials"].image)[0]
    split = d["trials"].split.map({"train": 0, "val": 1, "test": 2}).to_numpy()
    nc = noise_ceiling_from_repeats(d["responses"], image, split)
    truth = d["truth"]
    assert np.corrcoef(nc, truth.nc_true)[0, 1] > 0.5
    early = truth.area.isin(EARLY).to_numpy()
    assert truth.nc_true[early].min() > 25 and truth.nc_true[early].max() < 95
    assert np.median(truth.nc_true[early]) > np.median(truth.nc_true[truth.area == "LO"])


def test_eeg_subject(sim):
    out, config, _ = sim
    d = load(subjects(out / "eeg")[0])
    n_voxels = len(config.eeg_channels) * config.eeg_n_times
    assert d["responses"].shape[1] == n_voxels and d["coords"].shape == (n_voxels, 3)
    truth = d["truth"]
    assert {"channel", "time_s"} <= set(truth.columns)
    assert truth.groupby("channel").size().eq(config.eeg_n_times).all()
    assert set(truth.channel) == set(config.eeg_channels)
    assert np.isclose(truth.time_s.max(), config.eeg_tmax) and truth.time_s.min() == 0
    # Low SNR, highest at the early occipital peak, nothing at stimulus onset.
    assert truth.nc_true.median() < 30 and truth.nc_true[truth.time_s == 0].max() < 1
    peak = truth.loc[truth.nc_true.idxmax()]
    assert peak.channel in {"O1", "Oz", "O2", "PO7", "PO3", "POz", "PO4", "PO8"} and 0.05 < peak.time_s < 0.2
    # Early peaks carry low-level content, late ones high-level.
    assert truth.level[truth.time_s < 0.13].mean() < truth.level[truth.time_s > 0.25].mean()


def test_subjects_differ(sim):
    out, _, _ = sim
    a, b = (load(s) for s in subjects(out / "fmri"))
    assert a["responses"].shape[1] != b["responses"].shape[1] or not np.allclose(a["truth"].u_x, b["truth"].u_x)
    assert not np.allclose(a["coords"].mean(0), b["coords"].mean(0))


def test_same_seed_same_files_other_seed_other_data(sim, tmp_path):
    out, config, _ = sim
    again = tmp_path / "again"
    simulate(again, config)
    assert tree_digest(again) == tree_digest(out)
    other = tmp_path / "other"
    simulate(other, SimulationConfig.from_dict({**SMALL, "seed": 1}))
    first = np.load(out / "fmri" / "subj01" / "responses.npy")
    second = np.load(other / "fmri" / "subj01" / "responses.npy")
    assert first.shape != second.shape or not np.allclose(first, second)
    assert (out / "fmri" / "images" / "img_00000.png").read_bytes() != (
        other / "fmri" / "images" / "img_00000.png"
    ).read_bytes()


def test_nan_voxels_option(tmp_path):
    config = SimulationConfig.from_dict({**SMALL, "n_images": 60, "n_test_images": 6, "n_eeg_subjects": 0,
                                         "n_fmri_subjects": 1, "nan_voxels": 3})  # fmt: skip
    report = simulate(tmp_path / "s", config)
    assert set(report["datasets"]) == {"fmri"} and not (tmp_path / "s" / "eeg").exists()
    d = load(tmp_path / "s" / "fmri" / "subj01")
    all_nan = np.isnan(d["responses"]).all(0)
    assert all_nan.sum() == 3 and np.isfinite(d["responses"][:, ~all_nan]).all()
    assert (d["truth"].all_nan.to_numpy() == all_nan).all()


def test_output_folder_rules(tmp_path):
    config = SimulationConfig.from_dict(
        {**SMALL, "n_images": 40, "n_test_images": 4, "n_fmri_subjects": 1, "n_eeg_subjects": 0}
    )
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an afo simulation"):
        simulate(foreign, config)
    assert (foreign / "notes.txt").read_text() == "keep me"
    simulate(tmp_path / "sim", SimulationConfig.from_dict({**SMALL, "n_images": 40, "n_test_images": 4}))
    simulate(tmp_path / "sim", config)  # an earlier simulation is replaced whole: no stale subjects
    assert not (tmp_path / "sim" / "eeg").exists() and len(subjects(tmp_path / "sim")) == 1
    assert not list(tmp_path.glob(".*tmp*"))


def test_config_from_dict_and_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'n_imagez'.*valid keys: .*n_images"):
        SimulationConfig.from_dict({"n_imagez": 10})
    bad_area = {**DEFAULT_AREAS[0].__dict__, "rf_sigmaa": [0.1, 0.2]}
    with pytest.raises(ValueError, match=r"area 'V1': unknown key\(s\) 'rf_sigmaa'.*rf_sigma"):
        SimulationConfig.from_dict({"areas": [bad_area]})
    with pytest.raises(ValueError, match="n_test_images"):
        SimulationConfig.from_dict({"n_images": 10, "n_test_images": 10})
    with pytest.raises(ValueError, match="image_size"):
        SimulationConfig.from_dict({"image_size": 8})
    with pytest.raises(ValueError, match=r"area '\?': expected a mapping"):
        SimulationConfig.from_dict({"areas": [3]})
    with pytest.raises(ValueError, match=r"eeg_channels.*'Qz'"):
        simulate(tmp_path / "x", SimulationConfig.from_dict({**SMALL, "eeg_channels": ["Oz", "Qz"]}))
    assert not any(tmp_path.iterdir())
    config = SimulationConfig.from_dict({"seed": 3, "eeg_channels": ["Oz", "O1"], "areas": [DEFAULT_AREAS[0].__dict__]})
    assert config.eeg_channels == ("Oz", "O1") and config.areas == (DEFAULT_AREAS[0],)
    assert SimulationConfig.from_dict(config.to_dict()) == config
    assert isinstance(config.areas[0], AreaSpec) and SimulationConfig.from_dict(None) == SimulationConfig()


def test_default_config_is_demo_sized():
    config = SimulationConfig()
    n_voxels = sum(a.grid[0] * a.grid[1] for a in config.areas) * (1 - config.voxel_dropout)
    assert 300 <= n_voxels <= 500 and 600 <= config.n_images <= 800 and 64 <= config.image_size <= 96
    assert config.n_fmri_subjects == 3 and config.n_eeg_subjects == 1 and len(config.eeg_channels) == 17


# -- heterogeneous experiments (image_sets + datasets) ----------------------------------------------------

HETERO = {
    "image_size": 48, "feature_grid": 16,
    "image_sets": [
        {"name": "big", "n_images": 80, "n_test_images": 8},
        {"name": "shared", "n_images": 60, "n_test_images": 6},
        {"name": "held", "n_images": 50, "n_test_images": 6, "file_format": "jpeg", "file_size": 64, "reuse_from": "big", "n_reused": 3},
    ],
    "datasets": [
        {"name": "nsd", "modality": "fmri", "image_set": "big", "n_subjects": 2, "test_repeats": 3},
        {"name": "hcp", "modality": "fmri", "image_set": "big", "n_subjects": 1, "n_average": 4, "snr_scale": 0.3, "test_repeats": 4,
         "overrides": {"voxel_mm": 1.6, "areas": [{**DEFAULT_AREAS[0].__dict__, "grid": [5, 6]}, {**DEFAULT_AREAS[4].__dict__, "grid": [4, 6]}]}},
        {"name": "eeg", "modality": "eeg", "image_set": "shared", "n_subjects": 1, "test_repeats": 5, "overrides": {"eeg_n_times": 6}},
        {"name": "meg", "modality": "meg", "image_set": "shared", "n_subjects": 2, "test_repeats": 3,
         "overrides": {"eeg_n_times": 6, "eeg_topo_sigma_mm": 30.0, "eeg_channels": ["O1", "Oz", "O2", "PO7", "PO8", "P9", "P10"]}},
        {"name": "bold", "modality": "fmri", "image_set": "held", "n_subjects": 1, "snr_scale": 0.5, "test_repeats": 4},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def hetero(tmp_path_factory) -> tuple[Path, SimulationConfig, dict]:
    config = SimulationConfig.from_dict(HETERO)
    out = tmp_path_factory.mktemp("hetero") / "synthetic"
    return out, config, simulate(out, config)


def test_hetero_datasets_are_folder_datasets_with_their_own_design(hetero):
    out, config, report = hetero
    assert list(report["datasets"]) == ["nsd", "hcp", "eeg", "meg", "bold"]
    for spec in config.datasets:
        root = out / spec.name
        meta = yaml.safe_load((root / "dataset.yaml").read_text())
        assert meta == {**meta, "name": f"synthetic_{spec.name}", "modality": spec.modality}
        found = subjects(root)
        assert [p.name for p in found] == [f"subj{i + 1:02d}" for i in range(spec.n_subjects)]
        image_set = config.image_set(spec.image_set)
        files = sorted(p.name for p in (root / "images").iterdir())
        assert len(files) == image_set.n_images and all(f.startswith(f"{image_set.name}_") for f in files)
        for subject in found:
            d = load(subject)
            assert set(d["trials"].image) <= set(files) and np.isfinite(d["responses"]).all()
            counts = d["trials"].image.value_counts()
            test = d["trials"][d["trials"].split == "test"].image.unique()
            assert len(test) == image_set.n_test_images and (counts[test] == spec.test_repeats).all()
    # Layouts differ: the HCP-like subject has its own two areas; MEG and EEG subjects their own sensors and ROIs.
    assert set(load(out / "hcp" / "subj01")["rois"].roi) == {"V1", "LO"}
    assert load(out / "hcp" / "subj01")["responses"].shape[1] <= 5 * 6 + 4 * 6
    meg = load(out / "meg" / "subj01")
    assert meg["responses"].shape[1] == 7 * 6 and set(meg["rois"].roi) <= {"MEG_early", "MEG_mid", "MEG_late"}
    assert set(load(out / "eeg" / "subj01")["rois"].roi) <= {"EEG_early", "EEG_mid", "EEG_late"}
    # EEG and MEG subjects saw the same image set with the same split (so the big-brain option applies).
    split = lambda s: load(s)["trials"].drop_duplicates("image").set_index("image").split.sort_index()  # noqa: E731
    assert split(out / "eeg" / "subj01").equals(split(out / "meg" / "subj02"))


def test_hetero_snr_follows_the_dataset(hetero):
    out, _, _ = hetero
    snr = {
        name: pd.concat(load(s)["truth"] for s in subjects(out / name)).groupby("area").snr.median()
        for name in ("nsd", "hcp", "bold")
    }
    # snr_scale 0.3 on 4 averaged individuals (x sqrt(4), less what misaligned maps cancel) and 0.5 stay below NSD's.
    assert (snr["hcp"]["V1"] < snr["nsd"]["V1"]) and (snr["bold"]["V1"] < 0.7 * snr["nsd"]["V1"])
    assert snr["bold"]["V1"] == pytest.approx(0.5 * snr["nsd"]["V1"], rel=0.3)
    # Noise ceilings from the repeats agree with the truth for the group average too.
    d = load(out / "hcp" / "subj01")
    split = d["trials"].split.map({"train": 0, "val": 1, "test": 2}).to_numpy()
    nc = noise_ceiling_from_repeats(d["responses"], pd.factorize(d["trials"].image)[0], split)
    assert np.corrcoef(nc, d["truth"].nc_true)[0, 1] > 0.5


def distance(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute RGB difference (0-255) after resizing ``a`` to ``b``'s size."""
    a = np.asarray(a.convert("RGB").resize(b.size, Image.Resampling.BILINEAR), dtype=float)
    return float(np.abs(a - np.asarray(b.convert("RGB"), dtype=float)).mean())


def test_hetero_holdout_reuses_images_as_shipped(hetero):
    out, config, report = hetero
    reused = report["image_sets"]["held"]["reused"]
    assert len(reused) == 3 and all(r["source_set"] == "big" for r in reused)
    for r in reused:
        held = Image.open(out / "bold" / "images" / r["image"])
        assert held.format == "JPEG" and held.size == (64, 64) and r["image"].endswith(".jpg")
        source = Image.open(out / "nsd" / "images" / r["source_image"])
        assert source.size == (48, 48)
        # The same picture, re-encoded and resized: close in pixels, not identical bytes.
        assert distance(held, source) < 3
    # Any other holdout image is far from every image of the training set.
    held_names = {r["image"] for r in reused}
    sources = [Image.open(p) for p in sorted((out / "nsd" / "images").iterdir())]
    for other in sorted((out / "bold" / "images").iterdir())[:5]:
        if other.name not in held_names:
            assert min(distance(Image.open(other), s) for s in sources) > 3
    # A dataset's image set written once: the second dataset of a set links (or copies) the same bytes.
    assert (out / "hcp" / "images" / "big_00000.png").read_bytes() == (
        out / "nsd" / "images" / "big_00000.png"
    ).read_bytes()


def test_hetero_config_round_trip_and_errors(hetero):
    _, config, _ = hetero
    assert SimulationConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="image_set 'nope' is not one of"):
        SimulationConfig.from_dict({**HETERO, "datasets": [{**HETERO["datasets"][0], "image_set": "nope"}]})
    with pytest.raises(ValueError, match="reuse_from 'held' must name an earlier image set"):
        SimulationConfig.from_dict(
            {
                **HETERO,
                "image_sets": [
                    {**HETERO["image_sets"][0], "reuse_from": "held", "n_reused": 2},
                    *HETERO["image_sets"][1:],
                ],
            }
        )
    with pytest.raises(ValueError, match="n_average applies to fMRI only"):
        SimulationConfig.from_dict({**HETERO, "datasets": [{**HETERO["datasets"][2], "n_average": 3}]})
    with pytest.raises(ValueError, match=r"overrides \['n_images'\] not allowed"):
        SimulationConfig.from_dict({**HETERO, "datasets": [{**HETERO["datasets"][0], "overrides": {"n_images": 3}}]})
    with pytest.raises(ValueError, match="modality must be one of"):
        SimulationConfig.from_dict({**HETERO, "datasets": [{**HETERO["datasets"][0], "modality": "pet"}]})
