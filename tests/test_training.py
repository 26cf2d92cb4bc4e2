import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from afo.data.folder import prepare
from afo.features import BackboneSpec, extract_features
from afo.io.predictions import read_predictions
from afo.training.fit import TrainSpec, fit
from afo.training.modelfile import load_model
from afo.training.predict import predict_file
from afo.training.soup import greedy_soup

MODEL = {"conv_width": 8, "out_dim": 8, "n_convs": 2, "kernel_size": 3, "pe_frequencies": 4, "mlp_width": 16, "sigma": 0.0}
TRAIN = {
    "lr": 0.01, "weight_decay": 0.0001, "betas": [0.9, 0.999], "batch_size": 8, "max_voxels": 6,
    "epoch_fraction": 0.5, "max_epochs": 4, "patience": 10, "top_k": 3, "lambda_entropy": 3e-5,
    "smoothl1_beta": 0.01, "dk_weight": 0.5, "seed": 0,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import write_folder_dataset

    root = tmp_path_factory.mktemp("train")
    write_folder_dataset(root / "ds", n_images=40, n_voxels=10, n_repeated=6, n_val=6)
    prepare(root / "ds", root / "store.h5", image_size=16)
    spec = BackboneSpec("vit_tiny_patch16_224", layers=(0, 1), resolution=16, model_kwargs={"patch_size": 4, "depth": 2, "embed_dim": 24, "num_heads": 2})
    torch.manual_seed(0)
    extract_features(root / "store.h5", root / "features.h5", spec)
    return root


def _spec(data, **kw):
    kw = {"model": MODEL, "train": TRAIN, **kw}
    return TrainSpec(stores={"ds": str(data / "store.h5")}, features={"ds": str(data / "features.h5")}, **kw)


def test_greedy_soup_logic():
    # Score = -(w - 2)^2: averaging the best (w=1) with w=3 hits 2 exactly; w=10 would spoil it.
    cands = [(0.9, {"w": torch.tensor(1.0)}), (0.5, {"w": torch.tensor(10.0)}), (0.8, {"w": torch.tensor(3.0)})]
    score = lambda s: -float((s["w"] - 2.0) ** 2)  # noqa: E731
    state, members, best = greedy_soup(cands, score)
    assert members == [0, 2] and float(state["w"]) == pytest.approx(2.0) and best == pytest.approx(0.0)
    # Strict improvement: an equal score does not join.
    state, members, _ = greedy_soup([(1.0, {"w": torch.tensor(2.0)}), (0.5, {"w": torch.tensor(2.0)})], score)
    assert members == [0]
    # Integer buffers are not averaged.
    state, _, _ = greedy_soup([(1, {"w": torch.tensor(1.0), "n": torch.tensor(3)}), (0, {"w": torch.tensor(3.0), "n": torch.tensor(5)})], score)
    assert int(state["n"]) == 3


def test_fit_writes_model_metrics_and_is_deterministic(data, tmp_path):
    report = fit(_spec(data), tmp_path / "a")
    assert (tmp_path / "a" / "model.pt").exists()
    metrics = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert len(metrics) == 4 and metrics["val_r"].notna().all()
    assert 1 <= report["soup_members"] <= report["candidates"] <= 3
    model, model_file = load_model(tmp_path / "a" / "model.pt")
    assert model_file.voxels["ds/subj01"].tolist() == list(range(10))
    assert json.loads(model_file.info["spec"])["train"]["seed"] == 0
    fit(_spec(data), tmp_path / "b")
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_backbone_features_untouched_and_conv_trained(data, tmp_path):
    from afo.features import FeatureCache

    before = [t.clone() for t in FeatureCache(data / "features.h5").load()]
    fit(_spec(data), tmp_path / "m")
    after = FeatureCache(data / "features.h5").load()
    assert all(torch.equal(x, y) for x, y in zip(before, after))


def test_stage1_roi_and_predictions(data, tmp_path):
    rois = pd.DataFrame({"dataset": "ds", "subject": np.repeat(["subj01", "subj02"], 10), "voxel": np.tile(np.arange(10), 2), "roi": np.tile(["0"] * 4 + ["1"] * 6, 2)})
    rois.to_csv(tmp_path / "rois.csv", index=False)
    fit(_spec(data, rois=str(tmp_path / "rois.csv"), roi="0"), tmp_path / "s1")
    _, model_file = load_model(tmp_path / "s1" / "model.pt")
    assert model_file.voxels["ds/subj02"].tolist() == [0, 1, 2, 3]
    predict_file(tmp_path / "s1" / "model.pt", {"ds": data / "store.h5"}, {"ds": data / "features.h5"}, ["train", "val"], tmp_path / "dk.h5")
    pred = read_predictions(tmp_path / "dk.h5")
    images, voxels, values = pred["ds/subj01"]
    assert voxels.tolist() == [0, 1, 2, 3] and values.shape == (images.size, 4) and np.isfinite(values).all()


def test_resume_after_kill_continues_from_last_checkpoint(data, tmp_path):
    spec = _spec(data, train={**TRAIN, "max_epochs": 6, "epoch_fraction": 4.0, "patience": 20})
    fit(spec, tmp_path / "whole")
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "from afo.training.fit import TrainSpec, fit;"
        "fit(TrainSpec(**json.loads(sys.argv[2])), sys.argv[3])"
    )
    from dataclasses import asdict

    args = [sys.executable, "-c", code, str(os.path.dirname(__file__)), json.dumps(asdict(spec)), str(tmp_path / "killed")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / "killed" / "work" / spec.digest()
    deadline = time.time() + 120
    while time.time() < deadline and not (work / "last.ckpt").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (work / "last.ckpt").exists() and not (tmp_path / "killed" / "model.pt").exists()
    epoch_at_kill = torch.load(work / "last.ckpt", weights_only=False)["epoch"]
    assert epoch_at_kill < 5
    fit(spec, tmp_path / "killed")
    metrics = pd.read_csv(tmp_path / "killed" / "metrics.csv")
    assert metrics["epoch"].max() == 5
    # With sigma = 0 nothing random depends on the process: the resumed run ends where the whole one did.
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(a[k], b[k]) for k in a)
