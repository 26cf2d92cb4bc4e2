"""The streaming data path: rows read per batch from the files, sparse dark knowledge, streamed scores
and prediction files, and the backbone on the fly (backbone.cache: none)."""

import pickle

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from test_training import MODEL, TRAIN, _spec, data  # noqa: F401  (data: the module's tiny store and feature cache)

from afo.io import CorruptFileError
from afo.io.predictions import read_predictions, write_predictions, writing_predictions
from afo.io.rows import RowReader
from afo.metrics import PearsonAccumulator, pearson_r
from afo.training.datamodule import TrainingData
from afo.training.subjects import TrainingDataError

BACKBONE = {
    "name": "vit_tiny_patch16_224",
    "layers": [0, 1],
    "resolution": 16,
    "model_kwargs": {"patch_size": 4, "depth": 2, "embed_dim": 24, "num_heads": 2},
    "cache": "none",
}


def test_row_reader_matches_h5py_on_every_layout(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 37)).astype(np.float32)
    x = rng.standard_normal((50, 3, 4, 5)).astype(np.float16)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("chunked", data=a, chunks=(7, 10))  # column chunks with a partial edge chunk
        f.create_dataset("contiguous", data=a)
        f.create_dataset("compressed", data=a, chunks=(7, 10), compression="lzf")  # read by h5py
        f.create_dataset("rows4d", data=x, chunks=(1, 3, 4, 5))  # a feature cache's layout
        f.create_dataset("split4d", data=x, chunks=(3, 2, 4, 5))
        f.create_dataset("vector", data=np.arange(100), chunks=(7,))
    rows = np.array([5, 299, 0, 5, 17, 150])
    for name, ref in (
        ("chunked", a),
        ("contiguous", a),
        ("compressed", a),
        ("rows4d", x),
        ("split4d", x),
        ("vector", np.arange(100)),
    ):
        reader = RowReader(tmp_path / "f.h5", name)
        sel = rows[rows < len(ref)]
        np.testing.assert_array_equal(reader.read(sel), ref[sel])
        again = pickle.loads(pickle.dumps(reader))  # a DataLoader worker's copy opens the file itself
        np.testing.assert_array_equal(again.read(sel[::-1]), ref[sel[::-1]])
        assert reader.read([]).shape == (0, *ref.shape[1:])
        assert reader.mapped == (name != "compressed")  # a compressed dataset is read by h5py
    with pytest.raises(IndexError):
        RowReader(tmp_path / "f.h5", "contiguous").read([300])


def test_row_reader_refuses_a_truncated_file_instead_of_crashing(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("a", data=np.ones((1000, 50), dtype=np.float32))
    raw = (tmp_path / "f.h5").read_bytes()
    (tmp_path / "f.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        RowReader(tmp_path / "f.h5", "a", "feature cache", "rerun features").read([0])


def test_pearson_accumulator_equals_pearson_r_over_blocks():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((90, 6)) + 1000.0  # a large offset: no sum-of-squares cancellation
    b = 0.4 * a + rng.standard_normal((90, 6))
    a[4, 1] = np.nan
    b[:88, 3] = np.nan  # two pairs left: NaN
    a[:, 5] = 7.0  # constant: NaN
    acc = PearsonAccumulator(6)
    for start in range(0, 90, 16):
        acc.add(a[start : start + 16], b[start : start + 16])
    np.testing.assert_allclose(acc.r(), pearson_r(a, b), rtol=1e-12, equal_nan=True)


def test_streamed_prediction_file_has_the_whole_file_checksum(tmp_path):
    rng = np.random.default_rng(2)
    images, voxels, pred = np.arange(10) * 3, np.array([1, 4, 7]), rng.standard_normal((10, 3)).astype(np.float32)
    write_predictions(tmp_path / "whole.h5", {"d/s": (images, voxels, pred)}, dtype="float16")
    with writing_predictions(tmp_path / "streamed.h5", "float16") as writer:
        part = writer.subject("d/s", images, voxels)
        for start in range(0, 10, 4):
            part.write(pred[start : start + 4])
    with h5py.File(tmp_path / "whole.h5") as f, h5py.File(tmp_path / "streamed.h5") as g:
        assert f["d/s"].attrs["sha256"] == g["d/s"].attrs["sha256"]
        assert g["d/s/pred"].chunks is None  # contiguous: rows are memory-mapped
    np.testing.assert_array_equal(read_predictions(tmp_path / "streamed.h5")["d/s"][2], pred.astype(np.float16))


def _rois(tmp_path):
    rois = pd.DataFrame(
        {
            "dataset": "ds",
            "subject": np.repeat(["subj01", "subj02"], 10),
            "voxel": np.tile(np.arange(10), 2),
            "roi": np.tile(["0"] * 4 + ["1"] * 6, 2),
        }
    )
    rois.to_csv(tmp_path / "rois.csv", index=False)
    return tmp_path / "rois.csv"


def _dk_file(path, data, voxels, value=None, images=None):  # noqa: F811
    """A dark-knowledge file of ``voxels`` for both subjects over every image (predictions = a known function)."""
    from afo.data.store import PreparedStore

    with PreparedStore(data / "store.h5") as store:
        n = store.n_images if images is None else images
    rows = np.arange(n)
    pred = rows[:, None] * 100.0 + np.asarray(voxels)[None] if value is None else np.full((n, len(voxels)), value)
    write_predictions(path, {f"ds/{s}": (rows, np.asarray(voxels), pred) for s in ("subj01", "subj02")})


def test_dark_knowledge_is_read_sparsely_per_batch(data, tmp_path):  # noqa: F811
    from afo.io.tables import read_roi_selection

    rois = _rois(tmp_path)
    _dk_file(tmp_path / "a.h5", data, [0, 1, 2, 3])
    _dk_file(tmp_path / "b.h5", data, [4, 5, 6, 7, 8, 9])
    dm = TrainingData(
        {"ds": data / "store.h5"},
        {"ds": data / "features.h5"},
        batch_size=8,
        max_voxels=6,
        epoch_fraction=0.5,
        seed=0,
        own=read_roi_selection(rois, "0"),
        dark_knowledge=[tmp_path / "a.h5", tmp_path / "b.h5"],
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    for key, _start, _stop in batch.parts:
        s = next(x for x in dm.subjects if x.key == key)
        vi = batch.voxel_index[key].numpy()
        # The images of the batch's rows are not in the batch; the dk values encode them: image * 100 + voxel.
        dk = batch.dk[key].numpy()
        images = np.round((dk - s.voxels[vi][None]) / 100.0)
        np.testing.assert_allclose(dk, images * 100.0 + s.voxels[vi][None], rtol=1e-3)  # float16 file
        assert np.isin(images, s.train_images).all()
    # A helper voxel without dark knowledge, and a voxel predicted by two files, are refused.
    with pytest.raises(TrainingDataError, match="does not cover 6 helper voxel"):
        TrainingData(
            {"ds": data / "store.h5"},
            {"ds": data / "features.h5"},
            8,
            6,
            0.5,
            0,
            own=read_roi_selection(rois, "0"),
            dark_knowledge=[tmp_path / "a.h5"],
        ).setup()
    _dk_file(tmp_path / "nan.h5", data, [4, 5, 6, 7, 8, 9], value=np.nan)
    with pytest.raises(TrainingDataError, match="does not cover 6 helper voxel"):
        TrainingData(
            {"ds": data / "store.h5"},
            {"ds": data / "features.h5"},
            8,
            6,
            0.5,
            0,
            own=read_roi_selection(rois, "0"),
            dark_knowledge=[tmp_path / "a.h5", tmp_path / "nan.h5"],
        ).setup()
    with pytest.raises(TrainingDataError, match="another dark-knowledge file"):
        TrainingData(
            {"ds": data / "store.h5"},
            {"ds": data / "features.h5"},
            8,
            6,
            0.5,
            0,
            own=read_roi_selection(rois, "0"),
            dark_knowledge=[tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "a.h5"],
        ).setup()


def test_batches_are_the_same_in_workers_and_in_the_process(data):  # noqa: F811
    def batches(workers):
        dm = TrainingData(
            {"ds": data / "store.h5"},
            {"ds": data / "features.h5"},
            batch_size=8,
            max_voxels=6,
            epoch_fraction=1.0,
            seed=3,
            num_workers=workers,
        )
        dm.setup()
        return list(dm.train_dataloader()), list(dm.val_dataloader())

    (train0, val0), (train2, val2) = batches(0), batches(2)
    assert len(train0) == len(train2) and len(val0) == len(val2)
    for a, b in zip(train0, train2):
        assert a.parts == b.parts and all(torch.equal(x, y) for x, y in zip(a.features, b.features))
        assert all(torch.equal(a.targets[k], b.targets[k]) for k in a.targets)
    for a, b in zip(val0, val2):
        assert a.key == b.key and torch.equal(a.targets, b.targets) and torch.equal(a.features[0], b.features[0])


def test_backbone_on_the_fly_gives_the_cached_features_and_trains(data, tmp_path):  # noqa: F811
    from afo.training.fit import TrainSpec, fit
    from afo.training.predict import predict_file

    disk = TrainingData({"ds": data / "store.h5"}, {"ds": data / "features.h5"}, 8, 6, 0.5, 0)
    fly = TrainingData({"ds": data / "store.h5"}, {}, 8, 6, 0.5, 0, backbone=BACKBONE)
    disk.setup()
    fly.setup()
    assert fly.layer_shapes == disk.layer_shapes
    rows = np.array([3, 0, 17, 17, 39])
    inputs = fly.bank.get("ds", rows)
    assert inputs[0].dtype == torch.uint8 and inputs[0].shape == (5, 16, 16, 3)
    for got, cached in zip(fly.bank.features(inputs), disk.bank.get("ds", rows)):
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), cached.float(), atol=2e-2, rtol=1e-2)  # float16 rounding of the cache
    # A whole job without feature caches: same batches, features computed in each batch; val r as with the cache.
    spec = TrainSpec(stores={"ds": str(data / "store.h5")}, features={}, model=MODEL, train=TRAIN, backbone=BACKBONE)
    fly_report = fit(spec, tmp_path / "fly")
    disk_report = fit(_spec(data), tmp_path / "disk")
    assert fly_report["val_r"] == pytest.approx(disk_report["val_r"], abs=0.02)
    from afo.training.modelfile import read_model_file

    # The model file of a job without caches records the backbone it ran, as a cached job's does.
    fly_backbone = read_model_file(tmp_path / "fly" / "model.pt").inputs.backbone
    assert fly_backbone == read_model_file(tmp_path / "disk" / "model.pt").inputs.backbone
    assert fly_backbone.name == BACKBONE["name"] and list(fly_backbone.layers) == list(BACKBONE["layers"])
    predict_file(
        tmp_path / "fly" / "model.pt",
        {"ds": data / "store.h5"},
        {},
        ["val", "test"],
        tmp_path / "fly.h5",
        dtype="float32",
        backbone=BACKBONE,
    )
    predict_file(
        tmp_path / "fly" / "model.pt",
        {"ds": data / "store.h5"},
        {"ds": data / "features.h5"},
        ["val", "test"],
        tmp_path / "disk.h5",
        dtype="float32",
    )
    fly_pred, disk_pred = read_predictions(tmp_path / "fly.h5"), read_predictions(tmp_path / "disk.h5")
    for key in disk_pred:
        np.testing.assert_allclose(fly_pred[key][2], disk_pred[key][2], atol=0.05)
    from afo.features import FeatureSourceError

    with pytest.raises(FeatureSourceError, match="no feature cache for dataset"):
        TrainingData({"ds": data / "store.h5"}, {}, 8, 6, 0.5, 0).setup()


def test_probing_the_backbone_without_a_cache(data):  # noqa: F811
    from afo.probing.benchmark import ExtractorSpec, ProbeSettings, probe_dataset

    spec = ExtractorSpec.from_config("backbone", {"source": "backbone"})
    settings = ProbeSettings(n_components=5, cv=3, pool_grid=1)
    cached = probe_dataset(spec, "ds", data / "store.h5", settings, features_path=data / "features.h5")
    fly = probe_dataset(spec, "ds", data / "store.h5", settings, backbone=BACKBONE)
    assert len(fly) == len(cached) == 20
    np.testing.assert_allclose(fly["r_test"], cached["r_test"], atol=0.05)
