import json

import h5py
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

MODEL = {
    "conv_width": 8,
    "out_dim": 8,
    "n_convs": 2,
    "kernel_size": 3,
    "pe_frequencies": 4,
    "mlp_width": 16,
    "sigma": 0.0,
}
TRAIN = {
    "lr": 0.01,
    "weight_decay": 0.0001,
    "betas": [0.9, 0.999],
    "batch_size": 8,
    "max_voxels": 6,
    "epoch_fraction": 0.5,
    "max_epochs": 4,
    "patience": 10,
    "top_k": 3,
    "lambda_entropy": 3e-5,
    "smoothl1_beta": 0.01,
    "dk_weight": 0.5,
    "seed": 0,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import write_folder_dataset

    root = tmp_path_factory.mktemp("train")
    write_folder_dataset(root / "ds", n_images=40, n_voxels=10, n_repeated=6, n_val=6)
    prepare(root / "ds", root / "store.h5", image_size=16)
    spec = BackboneSpec(
        "vit_tiny_patch16_224",
        layers=(0, 1),
        resolution=16,
        model_kwargs={"patch_size": 4, "depth": 2, "embed_dim": 24, "num_heads": 2},
    )
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
    state, _, _ = greedy_soup(
        [(1, {"w": torch.tensor(1.0), "n": torch.tensor(3)}), (0, {"w": torch.tensor(3.0), "n": torch.tensor(5)})],
        score,
    )
    assert int(state["n"]) == 3


def test_model_config_rejects_unknown_settings():
    from afo.training.modelfile import ModelConfig, ModelFileError

    assert ModelConfig.from_dict({"conv_width": 8}).conv_width == 8
    with pytest.raises(ModelFileError, match="conv_widht"):
        ModelConfig.from_dict({"conv_widht": 8})


def test_model_file_round_trip_and_foreign_file(data, tmp_path):
    from afo.training.modelfile import ModelFileError, read_model_file

    fit(_spec(data, train={**TRAIN, "max_epochs": 1}), tmp_path / "m")
    model, model_file = load_model(tmp_path / "m" / "model.pt")
    assert model_file.state_dict == {} and model_file.config.conv_width == MODEL["conv_width"]
    assert model_file.layer_shapes == [tuple(s) for s in model.layer_shapes]
    full = read_model_file(tmp_path / "m" / "model.pt")
    assert all(torch.equal(full.state_dict[k], v) for k, v in model.state_dict().items())
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="other.pt: not an afo model file"):
        load_model(tmp_path / "other.pt")


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


def test_backbone_features_untouched_and_conv_trained(data, tmp_path, monkeypatch):
    import afo.training.fit as fit_module
    from afo.features import FeatureCache

    initial = {}
    build_model = fit_module.build_model

    def recording_build_model(spec, job_data):  # the conv blocks as the job initialised them
        config, model = build_model(spec, job_data)
        initial.update({k: v.clone() for k, v in model.conv_blocks.state_dict().items()})
        return config, model

    monkeypatch.setattr(fit_module, "build_model", recording_build_model)
    before = [t.clone() for t in FeatureCache(data / "features.h5").load()]
    fit(_spec(data), tmp_path / "m")
    after = FeatureCache(data / "features.h5").load()
    assert all(torch.equal(x, y) for x, y in zip(before, after))
    trained, _ = load_model(tmp_path / "m" / "model.pt")
    weights = {k: v for k, v in trained.conv_blocks.state_dict().items() if k.endswith("conv.weight")}
    assert len(weights) == 2 * MODEL["n_convs"]  # 2 tapped layers x n_convs units
    # Every conv unit of every tapped layer moved away from its initialisation.
    assert all(not torch.allclose(w, initial[k]) for k, w in weights.items()), sorted(
        k for k, w in weights.items() if torch.allclose(w, initial[k])
    )


def test_stage1_roi_and_predictions(data, tmp_path):
    rois = pd.DataFrame(
        {
            "dataset": "ds",
            "subject": np.repeat(["subj01", "subj02"], 10),
            "voxel": np.tile(np.arange(10), 2),
            "roi": np.tile(["0"] * 4 + ["1"] * 6, 2),
        }
    )
    rois.to_csv(tmp_path / "rois.csv", index=False)
    fit(_spec(data, rois=str(tmp_path / "rois.csv"), roi="0"), tmp_path / "s1")
    _, model_file = load_model(tmp_path / "s1" / "model.pt")
    assert model_file.voxels["ds/subj02"].tolist() == [0, 1, 2, 3]
    predict_file(
        tmp_path / "s1" / "model.pt",
        {"ds": data / "store.h5"},
        {"ds": data / "features.h5"},
        ["train", "val"],
        tmp_path / "dk.h5",
    )
    pred = read_predictions(tmp_path / "dk.h5")
    images, voxels, values = pred["ds/subj01"]
    assert voxels.tolist() == [0, 1, 2, 3] and values.shape == (images.size, 4) and np.isfinite(values).all()
    with h5py.File(tmp_path / "dk.h5") as f:
        assert f["ds/subj01/pred"].dtype == np.float16  # dark knowledge: half size
    # Evaluation asks for float32: the same predictions, unrounded.
    predict_file(
        tmp_path / "s1" / "model.pt",
        {"ds": data / "store.h5"},
        {"ds": data / "features.h5"},
        ["train", "val"],
        tmp_path / "p32.h5",
        dtype="float32",
    )
    with h5py.File(tmp_path / "p32.h5") as f:
        assert f["ds/subj01/pred"].dtype == np.float32
        exact = f["ds/subj01/pred"][:]
    assert np.allclose(exact, values, atol=1e-2) and not np.array_equal(exact, values)
    # The command line's store-based form writes the same file (with the feature caches, or the backbone itself).
    from afo.cli import main

    common = ["predict", "--model", str(tmp_path / "s1" / "model.pt"), "--store", f"ds={data / 'store.h5'}"]
    assert (
        main(
            [
                *common,
                "--features",
                f"ds={data / 'features.h5'}",
                "--dtype",
                "float32",
                "--out",
                str(tmp_path / "cli.h5"),
            ]
        )
        == 0
    )
    with h5py.File(tmp_path / "cli.h5") as f:
        assert np.array_equal(f["ds/subj01/pred"][:], exact)
    assert main([*common, "--out", str(tmp_path / "none.h5")]) == 2  # neither features nor a backbone


def test_validation_runs_through_a_real_loader_of_every_validation_image(data):
    from afo.metrics import pearson_r
    from afo.training.datamodule import TrainingData
    from afo.training.modelfile import ModelConfig
    from afo.training.predict import predict_images
    from afo.training.task import validation_score

    dm = TrainingData(
        {"ds": data / "store.h5"}, {"ds": data / "features.h5"}, batch_size=8, max_voxels=6, epoch_fraction=0.5, seed=0
    )
    dm.setup()
    chunks = list(dm.val_dataloader())
    for s in dm.subjects:
        rows = torch.cat([c.features[0] for c in chunks if c.key == s.key])
        assert torch.equal(rows, dm.bank.get(s.dataset, s.split_images["val"])[0])
        targets = torch.cat([c.targets for c in chunks if c.key == s.key]).numpy()
        np.testing.assert_array_equal(targets, s.split_means("val"))
    torch.manual_seed(0)
    model = ModelConfig.from_dict(MODEL).build(dm.layer_shapes, dm.coords)
    device = torch.device("cpu")
    direct = np.concatenate(
        [
            pearson_r(predict_images(model, dm.bank, s, s.split_images["val"], device), s.split_means("val"))
            for s in dm.subjects
        ]
    )
    assert validation_score(model, dm.val_dataloader(), dm.subjects, device) == pytest.approx(
        float(np.nanmean(direct)), abs=1e-6
    )
