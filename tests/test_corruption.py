"""Damaged files afo wrote earlier are named, with the step that rebuilds them (afo.io.reading_hdf5, checksums)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from afo.data.folder import prepare
from afo.data.store import PreparedStore
from afo.features import FeatureCache
from afo.io import CorruptFileError, MissingFileError
from afo.io.predictions import read_predictions, write_predictions


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_store_names_the_file_and_the_rebuild(folder_dataset, tmp_path):
    prepare(folder_dataset, tmp_path / "s.h5", image_size=8)
    _truncate(tmp_path / "s.h5", 0.3)
    with pytest.raises(CorruptFileError, match=r"s\.h5.*prepared store.*prepare"):
        PreparedStore(tmp_path / "s.h5")


def test_truncated_or_missing_feature_cache(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("layer_0", data=np.zeros((50, 4, 8, 8), dtype=np.float16))
        f.attrs.update(format_version=1, n_images=50, backbone="b", layers="[0]")
    _truncate(tmp_path / "f.h5", 0.2)
    with pytest.raises(CorruptFileError, match="feature cache.*features rule"):
        FeatureCache(tmp_path / "f.h5")
    with pytest.raises(MissingFileError, match="features rule"):
        FeatureCache(tmp_path / "absent.h5")


def test_prediction_file_damage_of_the_same_size_is_refused(tmp_path):
    path = tmp_path / "p.h5"
    pred = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_predictions(path, {"d/s": (np.arange(3), np.arange(4), pred)}, dtype="float32")
    assert np.array_equal(read_predictions(path)["d/s"][2], pred)
    with h5py.File(path, "r+") as f:  # same size, one value changed
        f["d/s/pred"][0, 0] = 99.0
    with pytest.raises(CorruptFileError, match="checksum"):
        read_predictions(path)
    _truncate(path, 0.4)
    with pytest.raises(CorruptFileError, match="prediction file"):
        read_predictions(path)


def test_prepare_on_a_full_disk_is_one_clear_error(folder_dataset, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from afo.data.store import NoSpaceError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(NoSpaceError, match="no space left on device"):
        prepare(folder_dataset, tmp_path / "s.h5", image_size=8)
    assert not (tmp_path / "s.h5").exists() and not list(tmp_path.glob(".s.h5.*"))  # nor its temporary


def test_damaged_model_files_are_named(tmp_path):
    import torch

    from afo.model import EncodingModel
    from afo.training.modelfile import ModelConfig, ModelFile, ModelFileError, load_model, save_model

    config = ModelConfig.from_dict(
        {"conv_width": 4, "out_dim": 4, "n_convs": 1, "kernel_size": 3, "pe_frequencies": 2, "mlp_width": 8}
    )
    coords = {"d/s": torch.randn(5, 3)}
    model = config.build([(3, 4, 4)], coords)
    path = tmp_path / "model.pt"
    save_model(path, ModelFile.of(model, config, {"d/s": torch.arange(5)}, {}))
    rebuilt, content = load_model(path)
    assert isinstance(rebuilt, EncodingModel) and content.voxels["d/s"].tolist() == list(range(5))
    payload = torch.load(path, weights_only=True)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = payload["state_dict"][key] + 1.0  # same size, other weights
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(path)
    _truncate(path, 0.5)
    with pytest.raises(ModelFileError, match="truncated or damaged"):
        load_model(path)
    with pytest.raises(ModelFileError, match="no model file"):
        load_model(tmp_path / "absent.pt")
