"""The encoding model recovers the synthetic brain (small case of benchmarks/synthetic_quality.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from afo.config import load_config
from afo.data.folder import prepare
from afo.evaluation.scores import voxel_table
from afo.features import BackboneSpec, extract_features
from afo.simulate import SimulationConfig, simulate
from afo.training.fit import TrainSpec, fit
from afo.training.predict import predict_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from synthetic_quality import quality  # noqa: E402


@pytest.mark.slow
def test_small_synthetic_brain_is_recovered(tmp_path):
    cfg = load_config(ROOT / "config.yaml")
    simulate(
        tmp_path / "sim",
        SimulationConfig.from_dict(
            {"seed": 1, "n_images": 360, "n_test_images": 32, "n_fmri_subjects": 1, "n_eeg_subjects": 0}
        ),
    )
    prepare(tmp_path / "sim" / "fmri", tmp_path / "store.h5", image_size=cfg["prepare"]["image_size"])
    torch.manual_seed(0)
    extract_features(tmp_path / "store.h5", tmp_path / "features.h5", BackboneSpec.from_config(cfg["backbone"]))
    train = {**cfg["train"], "max_epochs": 30, "epoch_fraction": 0.5}
    results = {}
    for name, overrides in (("full", {}), ("frozenrm", {"retina_mapper": "frozen"})):
        torch.manual_seed(0)
        spec = TrainSpec(
            stores={"s": str(tmp_path / "store.h5")},
            features={"s": str(tmp_path / "features.h5")},
            model={**cfg["model"], **overrides},
            train=train,
        )
        fit(spec, tmp_path / name)
        stores, caches = {"s": tmp_path / "store.h5"}, {"s": tmp_path / "features.h5"}
        predict_file(
            tmp_path / name / "model.pt", stores, caches, ["val", "test"], tmp_path / name / "pred.h5", dtype="float32"
        )
        table = voxel_table([(tmp_path / name / "model.pt", tmp_path / name / "pred.h5")], stores)
        truth = pd.read_csv(tmp_path / "sim" / "fmri" / "subj01" / "ground_truth.csv").assign(subject="subj01")
        truth = truth.rename(columns={"u_x": "true_u_x", "u_y": "true_u_y"})[
            ["subject", "voxel", "area", "true_u_x", "true_u_y"]
        ]
        results[name] = quality(table, truth)
    full = results["full"]
    assert min(full["u_r_x"], full["u_r_y"]) >= 0.9, full
    assert full["mean_layer_late"] > full["mean_layer_early"], full
    assert full["early_mean_r"] > results["frozenrm"]["early_mean_r"], results
