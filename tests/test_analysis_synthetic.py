"""Synthetic-brain checks (afo.evaluation.synthetic) on hand-made ground truths with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from afo.evaluation.synthetic import ari_with_null, summary_rows, synthetic_checks, write_synthetic_checks

AREAS = ["V1", "V2", "V3", "V4", "LO"]


def _simulator_folder(root, modality="fmri", n_per_area=30, seed=0):
    """A simulator-like folder: dataset.yaml and <subject>/ground_truth.csv for two subjects."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "dataset.yaml").write_text(f"name: s\nmodality: {modality}\n")
    for subject in ("subj01", "subj02"):
        (root / subject).mkdir()
        area = np.repeat(AREAS, n_per_area)
        level = np.select([np.isin(area, ["V1", "V2", "V3"]), area == "V4"], [0, 1], 2)
        pd.DataFrame(
            {
                "voxel": np.arange(area.size),
                "area": area,
                "level": level,
                "u_x": rng.uniform(-0.8, 0.8, area.size),
                "u_y": rng.uniform(-0.8, 0.8, area.size),
            }
        ).to_csv(root / subject / "ground_truth.csv", index=False)
    return root


def _inputs(tmp_path, veroi_from_area=True, seed=0):
    rng = np.random.default_rng(seed)
    root = _simulator_folder(tmp_path / "fmri")
    truth = pd.concat([pd.read_csv(root / s / "ground_truth.csv").assign(subject=s) for s in ("subj01", "subj02")])
    # veROIs = areas with V1-V3 merged (what a good clustering finds), or random labels.
    merged = truth["area"].replace({"V2": "V1", "V3": "V1"})
    labels = pd.factorize(merged)[0] if veroi_from_area else rng.integers(0, 3, len(truth))
    veroi = truth[["subject", "voxel"]].assign(dataset="synth_fmri", roi=labels.astype(str))
    veroi.to_csv(tmp_path / "veroi.csv", index=False)
    u = truth[["u_x", "u_y"]].to_numpy() + 0.05 * rng.normal(size=(len(truth), 2))
    late = truth["level"].to_numpy() == 2
    u[late] *= 0.1  # late voxels crowd the centre
    voxels = truth[["subject", "voxel"]].assign(
        dataset="synth_fmri",
        u_x=u[:, 0],
        u_y=u[:, 1],
        roi=veroi["roi"].to_numpy(),
        dataset_roi=truth["area"].to_numpy(),
        r_test=0.5,
    )
    voxels.to_csv(tmp_path / "voxels.csv", index=False)
    pd.DataFrame(
        [
            {
                "dataset": "synth_fmri",
                "subject": s,
                "roi_set": "all",
                "roi": "all",
                "n_voxels": 150,
                "n_candidates": 40,
                "n_queries": 40,
                "top1": t1,
                "top5": 0.9,
                "chance_top1": 1 / 40,
            }
            for s, t1 in (("subj01", 0.5), ("subj02", 0.3))
        ]
        + [
            {
                "dataset": "synth_fmri",
                "subject": "subj01",
                "roi_set": "veroi",
                "roi": "0",
                "n_voxels": 90,
                "n_candidates": 40,
                "n_queries": 40,
                "top1": 0.9,
                "top5": 1.0,
                "chance_top1": 1 / 40,
            }
        ]
    ).to_csv(tmp_path / "retrieval.csv", index=False)
    return root


def test_good_veroi_beats_chance_and_retinotopy_is_recovered(tmp_path):
    root = _inputs(tmp_path)
    checks = synthetic_checks(
        {"synth_fmri": root},
        tmp_path / "veroi.csv",
        tmp_path / "voxels.csv",
        tmp_path / "retrieval.csv",
        n_permutations=50,
    )
    c = checks["datasets"]["synth_fmri"]
    areas = c["veroi_vs_areas"]["areas"]
    assert areas["ari"] > 0.4 and areas["ari"] > areas["null_q95"] and areas["p"] == pytest.approx(1 / 51)
    assert abs(areas["null_mean"]) < 0.05 and areas["n_voxels"] == 300
    assert c["veroi_vs_areas"]["levels"]["ari"] == pytest.approx(1.0)  # merged V1-V3 = the levels exactly
    d = c["decoding"]
    assert d["mean_top1"] == pytest.approx(0.4) and d["mean_chance_top1"] == pytest.approx(1 / 40)
    assert d["top1_over_chance"] == pytest.approx(16.0)
    r = c["retinotopy"]
    assert r["mean_r_x"] > 0.95 and r["mean_r_y"] > 0.95 and r["pooled"]["n_early"] == 180
    assert r["pooled"]["sd_u_early"] > 3 * r["pooled"]["sd_u_late"]
    rows = summary_rows(checks)
    assert list(rows.columns) == ["dataset", "check", "value", "reference", "note"] and len(rows) == 7


def test_random_veroi_is_at_chance(tmp_path):
    root = _inputs(tmp_path, veroi_from_area=False)
    checks = synthetic_checks(
        {"synth_fmri": root},
        tmp_path / "veroi.csv",
        tmp_path / "voxels.csv",
        tmp_path / "retrieval.csv",
        n_permutations=50,
    )
    areas = checks["datasets"]["synth_fmri"]["veroi_vs_areas"]["areas"]
    assert abs(areas["ari"]) < 0.05 and areas["p"] > 0.01


def test_null_keeps_sizes_within_groups():
    labels = np.array(["a"] * 10 + ["b"] * 10)
    truth = labels.copy()
    groups = np.array([0] * 10 + [1] * 10)  # each group holds one label: a within-group shuffle changes nothing
    result = ari_with_null(labels, truth, groups, n_permutations=20, seed=0)
    assert result["ari"] == 1.0 and result["null_mean"] == 1.0 and result["p"] == 1.0


def test_eeg_has_no_retinotopy_check_and_cli_writes_json(tmp_path):
    _inputs(tmp_path)
    eeg = _simulator_folder(tmp_path / "eeg", modality="eeg")
    # The same tables, relabelled as an EEG dataset: veROI and decoding checks run, RetinaMap does not.
    for name in ("veroi.csv", "voxels.csv", "retrieval.csv"):
        t = pd.read_csv(tmp_path / name)
        t["dataset"] = "synth_eeg"
        t.to_csv(tmp_path / f"eeg_{name}", index=False)
    out = tmp_path / "checks.json"
    checks = synthetic_checks(
        {"synth_eeg": eeg},
        tmp_path / "eeg_veroi.csv",
        tmp_path / "eeg_voxels.csv",
        tmp_path / "eeg_retrieval.csv",
        n_permutations=20,
    )
    write_synthetic_checks(checks, out, tmp_path / "checks.html")
    checks = json.loads(out.read_text())
    assert checks["datasets"]["synth_eeg"]["retinotopy"] == {}
    assert checks["datasets"]["synth_eeg"]["decoding"]["mean_top1"] == pytest.approx(0.4)
    assert "veROI vs simulated areas" in (tmp_path / "checks.html").read_text()
