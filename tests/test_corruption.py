"""Damaged files afo wrote earlier are named, with the step that rebuilds them (afo.io.reading_hdf5, checksums)."""

from __future__ import annotations

from pathlib import Path

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


def _small_model_file(path):
    """A tiny version-3 model file with backbone, preprocessing and subject records (no backbone is built)."""
    import torch

    from afo.training.modelfile import (
        BackboneRecord,
        ModelConfig,
        ModelFile,
        ModelInputs,
        Preprocessing,
        SubjectRecord,
        save_model,
    )

    config = ModelConfig.from_dict(
        {"conv_width": 4, "out_dim": 4, "n_convs": 1, "kernel_size": 3, "pe_frequencies": 2, "mlp_width": 8}
    )
    model = config.build([(3, 4, 4)], {"d/s": torch.randn(5, 3)})
    inputs = ModelInputs(
        BackboneRecord("vit_tiny_patch16_224", (0,), 16),
        Preprocessing(12, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        {"d/s": SubjectRecord("d", "s", "fmri", rois={"roi": ["V1"] * 3 + ["V2"] * 2}, n_voxels=7)},
    )
    content = ModelFile.of(model, config, {"d/s": torch.arange(5)}, {"val_r": 0.5}, inputs=inputs)
    save_model(path, content)
    return content


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p["preprocessing"].update(image_size=13),
        lambda p: p["subjects"]["d/s"]["rois"]["roi"].__setitem__(0, "V2"),
        lambda p: p["model_args"].update(out_dim=5),
        lambda p: p["backbone"].update(layers=[1]),
        lambda p: p["subject_coords"]["d/s"].add_(1.0),
    ],
    ids=["image_size", "roi_label", "out_dim", "layers", "coords"],
)
def test_model_file_checksum_covers_every_setting_and_record(tmp_path, edit):
    """A same-size edit of anything that changes predictions or reports is refused, not loaded."""
    import torch

    from afo.training.modelfile import ModelFileError, read_model_file

    path = tmp_path / "model.pt"
    _small_model_file(path)
    assert read_model_file(path).inputs.subjects["d/s"].n_voxels == 7
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="does not match the file's checksum"):
        read_model_file(path)


def test_version_2_model_files_load_checked_on_weights_and_voxels(tmp_path):
    """Older files keep loading against the checksum they recorded; an edited out_dim is one line, not a traceback."""
    import torch

    from afo.training.modelfile import ModelFileError, load_model, read_model_file, weights_checksum

    path = tmp_path / "model.pt"
    _small_model_file(path)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 2
    del payload["subjects"]["d/s"]["n_voxels"]
    payload["sha256"] = weights_checksum(payload["state_dict"], payload["voxels"])
    torch.save(payload, path)
    content = read_model_file(path)
    assert content.version == 2 and content.inputs.subjects["d/s"].n_voxels is None
    payload["model_args"]["out_dim"] = 5  # not covered by a version-2 checksum: the weights do not fit
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match=r"model\.pt: its weights do not fit its model_args"):
        load_model(path)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML"),
        (b'{"model": "afo"}', "JSON"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1234\n", "git lfs pull"),
        (b"hello world\n", "not a torch archive"),
        (b"", "empty file"),
    ],
    ids=["html", "json", "lfs", "text", "empty"],
)
def test_files_that_are_not_model_files_are_named(tmp_path, capsys, content, match):
    from PIL import Image

    from afo.cli import main

    path = tmp_path / "model.pt"
    path.write_bytes(content)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    code = main(
        ["predict", "--model", str(path), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "p.h5")]
    )
    err = capsys.readouterr().err
    assert code == 2 and match in err and "model.pt" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_model_file_with_python_objects_never_advises_the_unsafe_loader(tmp_path):
    import torch

    from afo.training.modelfile import ModelFileError, read_model_file

    path = tmp_path / "model.pt"
    torch.save({"format": "afo-encoding-model", "x": Path("x")}, path)  # a class the safe loader refuses
    with pytest.raises(ModelFileError, match="safe loader") as info:
        read_model_file(path)
    assert "weights_only" not in str(info.value)
