"""The model file as a tool: self-contained model files, afo.load, `afo predict --images`, `afo decode` from the file."""

from __future__ import annotations

import json
import logging
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from afo.cli import main
from afo.data.folder import prepare
from afo.data.store import PreparedStore
from afo.features import BackboneSpec, extract_features
from afo.io.predictions import read_predictions
from afo.training.fit import TrainSpec, fit
from afo.training.modelfile import (
    MODEL_VERSION,
    ModelFileError,
    WeightsFileError,
    read_model_file,
    save_model,
    weights_checksum,
)
from afo.training.predict import predict_file

ROOT = Path(__file__).resolve().parents[1]
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
    "max_epochs": 3,
    "patience": 10,
    "top_k": 2,
    "lambda_entropy": 3e-5,
    "smoothl1_beta": 0.01,
    "dk_weight": 0.5,
    "seed": 0,
}
BACKBONE = {
    "name": "vit_tiny_patch16_224",
    "layers": [0, 1],
    "resolution": 16,
    "model_kwargs": {"patch_size": 4, "depth": 2, "embed_dim": 24, "num_heads": 2},
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _backbone(weights: Path | None = None) -> BackboneSpec:
    return BackboneSpec(
        BACKBONE["name"],
        tuple(BACKBONE["layers"]),
        BACKBONE["resolution"],
        pretrained_path=str(weights) if weights else None,
        model_kwargs=BACKBONE["model_kwargs"],
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained the workflow's way (prepare -> features -> fit), on a backbone read from a local weights
    file, plus the workflow's own predictions of the test images."""
    import timm
    from conftest import write_folder_dataset

    root = tmp_path_factory.mktemp("api")
    # Non-square 20 x 16 images: the store squashes them to 12 x 12, the backbone resizes to 16.
    write_folder_dataset(root / "ds", n_images=40, n_voxels=10, n_repeated=6, n_val=6)
    prepare(root / "ds", root / "store.h5", image_size=12)
    torch.manual_seed(1)
    weights = root / "backbone.pth"
    torch.save(
        timm.create_model(BACKBONE["name"], num_classes=0, img_size=16, **BACKBONE["model_kwargs"]).state_dict(),
        weights,
    )
    extract_features(root / "store.h5", root / "features.h5", _backbone(weights))
    spec = TrainSpec(
        stores={"tiny": str(root / "store.h5")}, features={"tiny": str(root / "features.h5")}, model=MODEL, train=TRAIN
    )
    fit(spec, root / "m")
    predict_file(
        root / "m" / "model.pt", spec.stores, spec.features, ["test"], root / "predictions.h5", dtype="float32"
    )
    return root


def test_model_file_records_backbone_preprocessing_and_subjects(trained):
    content = read_model_file(trained / "m" / "model.pt")
    assert content.version == MODEL_VERSION == 3 and content.afo_version
    backbone, pre = content.inputs.backbone, content.inputs.preprocessing
    assert (backbone.name, backbone.layers, backbone.resolution) == (BACKBONE["name"], (0, 1), 16)
    assert backbone.model_kwargs == BACKBONE["model_kwargs"] and backbone.weights_file == str(trained / "backbone.pth")
    assert len(backbone.weights_sha256) == 64
    assert pre.image_size == 12 and pre.feature_dtype == "float16" and len(pre.mean) == 3
    record = content.inputs.subjects["tiny/subj01"]
    assert (record.dataset, record.subject, record.modality, record.affine) == ("tiny", "subj01", "fmri", None)
    assert record.rois["roi"] == ["early"] * 5 + ["late"] * 5  # the dataset's labels, in the model's voxel order
    assert record.n_voxels == 10  # the subject's voxels in its dataset: a response of another length is refused


@pytest.mark.slow  # a multi-process or workflow run: make test, not make test-fast
def test_fresh_process_predicts_original_image_files_like_the_workflow(trained, tmp_path):
    """No config, the model file alone, the original image files -> r >= 0.999."""
    workflow = read_predictions(trained / "predictions.h5")
    with PreparedStore(trained / "store.h5") as store:
        names = store.image_names()
    for key, (images, _voxels, pred) in workflow.items():
        files = [str(trained / "ds" / "images" / names[i]) for i in images]
        code = textwrap.dedent(f"""
            import sys, numpy as np, afo
            assert "torch" not in sys.modules
            m = afo.load({str(trained / "m" / "model.pt")!r}, device="cpu")
            np.save({str(tmp_path / "fresh.npy")!r}, m.predict({files!r}, subject={key!r}, batch_size=4))
        """)
        subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=300)
        fresh = np.load(tmp_path / "fresh.npy")
        assert fresh.shape == pred.shape
        # The same values, not only the same pattern: the same pixels and features, other batches.
        np.testing.assert_allclose(fresh, pred, rtol=0, atol=1e-5)
        r = np.corrcoef(fresh.ravel(), pred.ravel())[0, 1]
        assert r >= 0.999, (key, r)
        per_voxel = [np.corrcoef(fresh[:, v], pred[:, v])[0, 1] for v in range(pred.shape[1]) if pred[:, v].std() > 0]
        assert min(per_voxel) >= 0.999


def test_api_inputs_voxels_features(trained):
    import afo

    m = afo.load(trained / "m" / "model.pt", device="cpu")
    assert m.subjects == ["tiny/subj01", "tiny/subj02"]
    table = m.voxels("tiny/subj01")
    assert list(table.columns) == ["voxel", "x", "y", "z", "roi_roi"] and len(table) == 10
    with PreparedStore(trained / "store.h5") as store:
        pixels = store.images(np.arange(5))
        np.testing.assert_allclose(table[["x", "y", "z"]].to_numpy(), store.coords("subj01")[table["voxel"]])
    files = sorted((trained / "ds" / "images").glob("*.png"))[:5]
    # Paths, PIL images and arrays are the same images; one array [B, H, W, 3] is B images.
    from_paths = m.predict(files, subject="tiny/subj01")
    from_pil = m.predict([Image.open(f) for f in files], subject="tiny/subj01")
    from_arrays = m.predict(
        np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]), subject="tiny/subj01", batch_size=2
    )
    np.testing.assert_allclose(from_pil, from_paths, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_arrays, from_paths, rtol=1e-5, atol=1e-6)
    every = m.predict(files)
    assert set(every) == set(m.subjects) and every["tiny/subj01"].shape == (5, 10)
    np.testing.assert_allclose(every["tiny/subj01"], from_paths, rtol=1e-5, atol=1e-6)
    # The store holds exactly the preprocessed images (the workflow's own resize).
    np.testing.assert_array_equal(m.preprocess(files), pixels)
    core = m.features(files)
    assert [c.shape for c in core] == [(5, MODEL["out_dim"], 4, 4)] * 2 and core[0].dtype == np.float32
    with pytest.raises(afo.api.ImageInputError, match="nobody"):
        m.predict(files, subject="nobody/x")
    with pytest.raises(afo.api.ImageInputError, match=r"\[H, W, 3\]"):
        m.predict(np.zeros((4, 4)), subject="tiny/subj01")


def test_predict_shows_progress_only_when_asked(trained, caplog):
    import afo

    m = afo.load(trained / "m" / "model.pt", device="cpu")
    files = sorted((trained / "ds" / "images").glob("*.png"))[:5]
    with caplog.at_level(logging.INFO, logger="afo"):
        m.predict(files, batch_size=2)
        assert "images (" not in caplog.text
        m.predict(files, batch_size=2, progress=True)
    lines = re.findall(r"model.pt: predict: (\d)/5 images \([\d.]+ img/s\)", caplog.text)
    assert lines == ["2", "4", "5"]


def test_weights_file_missing_or_different_is_one_clear_error(trained, tmp_path):
    import afo

    content = read_model_file(trained / "m" / "model.pt")
    expected = content.inputs.backbone.weights_sha256
    with pytest.raises(WeightsFileError, match=f"{tmp_path / 'moved.pth'}.*{expected}"):
        afo.load(trained / "m" / "model.pt", weights=tmp_path / "moved.pth")
    (tmp_path / "other.pth").write_bytes(b"not the weights")
    with pytest.raises(WeightsFileError, match=f"other.pth.*expected {expected}"):
        afo.load(trained / "m" / "model.pt", weights=tmp_path / "other.pth")
    # The file moved: naming its new place works (its hash is checked).
    (tmp_path / "moved.pth").write_bytes((trained / "backbone.pth").read_bytes())
    assert afo.load(trained / "m" / "model.pt", weights=tmp_path / "moved.pth").subjects


def test_version_1_model_file_loads_with_a_clear_error_or_a_backbone(trained, tmp_path):
    from dataclasses import replace

    import afo

    content = read_model_file(trained / "m" / "model.pt")
    old = tmp_path / "v1.pt"
    payload = replace(content, inputs=None).to_payload()
    payload["version"] = 1
    for key in ("backbone", "preprocessing", "subjects", "afo_version"):
        del payload[key]
    payload["sha256"] = weights_checksum(payload["state_dict"], payload["voxels"])  # what version 1 recorded
    torch.save(payload, old)
    with pytest.raises(ModelFileError, match="version-1 model file.*backbone"):
        afo.load(old)
    m = afo.load(old, backbone={**BACKBONE, "pretrained_path": str(trained / "backbone.pth")}, image_size=12)
    files = sorted((trained / "ds" / "images").glob("*.png"))[:3]
    np.testing.assert_allclose(
        m.predict(files, subject="tiny/subj01"),
        afo.load(trained / "m" / "model.pt").predict(files, subject="tiny/subj01"),
        rtol=1e-5,
        atol=1e-6,
    )
    save_model(tmp_path / "again.pt", content)  # a read file writes back as the current version
    assert read_model_file(tmp_path / "again.pt").inputs == content.inputs


def test_cli_predict_images_and_decode_from_the_model_file(trained, tmp_path, capsys, caplog):
    import logging

    from afo.cli import main

    caplog.set_level(logging.INFO, logger="afo")
    folder = trained / "ds" / "images"
    out = tmp_path / "preds.h5"
    assert (
        main(
            [
                "predict",
                "--model",
                str(trained / "m" / "model.pt"),
                "--images",
                str(folder),
                "--out",
                str(out),
                "--batch-size",
                "16",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images"] == 40 and re.search(r"predict: 16/40 images", caplog.text)  # progress
    preds = read_predictions(out)
    with h5py.File(out) as f:
        names = json.loads(f.attrs["image_names"])
    assert names == sorted(p.name for p in folder.glob("*.png")) and set(preds) == {"tiny/subj01", "tiny/subj02"}
    assert preds["tiny/subj01"][2].shape == (40, 10)
    # The store-based form still needs its files; mixing the forms is an argument error.
    assert main(["predict", "--model", str(trained / "m" / "model.pt"), "--out", str(out)]) == 2
    assert (
        main(
            [
                "predict",
                "--model",
                str(trained / "m" / "model.pt"),
                "--images",
                str(folder),
                "--out",
                str(out),
                "--store",
                f"tiny={trained / 'store.h5'}",
            ]
        )
        == 2
    )
    capsys.readouterr()
    # decode: the model file alone (no --config, no --backbone) ranks the images for a measured pattern.
    response = preds["tiny/subj01"][2][:3] + 0.01
    np.save(tmp_path / "response.npy", response)
    assert (
        main(
            [
                "decode",
                "--model",
                str(trained / "m" / "model.pt"),
                "--images",
                str(folder),
                "--response",
                str(tmp_path / "response.npy"),
                "--subject",
                "tiny/subj01",
                "--top",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    best = json.loads(capsys.readouterr().out)["best"]
    assert [best[str(q)][0]["image"] for q in range(3)] == names[:3]


def test_predict_maps_for_volumetric_subjects(trained, tmp_path):
    """A subject with an affine in the model file gets one NIfTI map per image in its own space."""
    import nibabel as nib

    from afo.api import predict_folder
    from afo.training.modelfile import SubjectRecord

    content = read_model_file(trained / "m" / "model.pt")
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, -10, -10]
    # Put subj01's voxels on a 2 mm grid so that the record's geometry holds them.
    grid = np.stack(np.unravel_index(np.arange(10), (5, 2, 1)), axis=1).astype(np.float32)
    content.subject_coords["tiny/subj01"] = torch.from_numpy(grid * 2 - 10)
    content.state_dict["necks.tiny/subj01.coords"] = content.subject_coords["tiny/subj01"].clone()
    subjects = dict(content.inputs.subjects)
    subjects["tiny/subj01"] = SubjectRecord("tiny", "subj01", "fmri", affine=affine.tolist(), volume_shape=(5, 2, 1))
    from dataclasses import replace

    volumetric = tmp_path / "vol.pt"
    save_model(volumetric, replace(content, inputs=replace(content.inputs, subjects=subjects)))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(sorted((trained / "ds" / "images").glob("*.png"))[:3]):
        (folder / f"my image {i}.png").write_bytes(f.read_bytes())
    report = predict_folder(volumetric, folder, tmp_path / "p.h5", maps_dir=tmp_path / "maps", device="cpu")
    assert report["maps"] == 3 and report["not_volumetric"] == ["tiny/subj02"]
    image = nib.load(tmp_path / "maps" / "tiny__subj01" / "my_image_0.nii.gz")
    np.testing.assert_allclose(image.affine, affine)
    values = image.get_fdata()[tuple(np.rint(grid).astype(int).T)]
    np.testing.assert_allclose(values, read_predictions(tmp_path / "p.h5")["tiny/subj01"][2][0], rtol=1e-6)


@pytest.mark.slow  # a multi-process or workflow run: make test, not make test-fast
def test_readme_api_example_runs_as_written(trained, tmp_path):
    """README's Python example, extracted and run in a project-like folder with the tiny model in place."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(# the Python API.*?)```", text, re.S)
    assert block, "README has no ```python block starting with '# the Python API'"
    (tmp_path / "results/models/afo/stage3").mkdir(parents=True)
    (tmp_path / "results/models/afo/stage3/model.pt").write_bytes((trained / "m" / "model.pt").read_bytes())
    (tmp_path / "resources/synthetic/fmri").mkdir(parents=True)
    (tmp_path / "resources/synthetic/fmri/images").symlink_to(trained / "ds" / "images")
    subprocess.run([sys.executable, "-c", block.group(1)], check=True, cwd=tmp_path, timeout=300)


def test_finetune_fits_new_subjects_on_the_frozen_core(trained, tmp_path, capsys):
    """`afo finetune` on a folder dataset: new subjects join the model file; core and base subjects stay as they were."""
    from conftest import write_folder_dataset

    import afo
    from afo.cli import main

    lab = write_folder_dataset(
        tmp_path / "lab", n_images=30, n_voxels=8, subjects=("subj01",), n_repeated=4, n_val=6, seed=5
    )
    (lab / "dataset.yaml").write_text("name: newlab\nmodality: fmri\n")
    out = tmp_path / "ft" / "model.pt"
    args = [
        "finetune",
        "--model",
        str(trained / "m" / "model.pt"),
        "--dataset",
        str(lab),
        "--out",
        str(out),
        "--train-config",
        json.dumps({"max_epochs": 2}),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index("{\n") :])  # AdaBelief prints its settings first
    assert report["new_subjects"] == ["newlab/subj01"] and report["epochs"] == 2
    base, tuned = read_model_file(trained / "m" / "model.pt"), read_model_file(out)
    assert sorted(tuned.voxels) == ["newlab/subj01", "tiny/subj01", "tiny/subj02"]
    for key, value in base.state_dict.items():  # the core and the base subjects' necks and heads, bit for bit
        assert torch.equal(tuned.state_dict[key], value), key
    assert (
        tuned.inputs.backbone == base.inputs.backbone
        and tuned.inputs.subjects["newlab/subj01"].rois["roi"][0] == "early"
    )
    assert (out.parent / "metrics.csv").is_file()
    m = afo.load(out, device="cpu")
    files = sorted((lab / "images").glob("*.png"))
    assert m.predict(files, subject="newlab/subj01").shape == (30, 8)
    np.testing.assert_allclose(
        m.predict(files[:4], subject="tiny/subj01"),
        afo.load(trained / "m" / "model.pt", device="cpu").predict(files[:4], subject="tiny/subj01"),
        rtol=1e-5,
        atol=1e-6,
    )
    # A dataset named like one the model has is refused (its subjects would collide).
    (lab / "dataset.yaml").write_text("name: tiny\nmodality: fmri\n")
    assert main([*args[:6], str(tmp_path / "again" / "model.pt"), *args[7:]]) == 2
    assert "already in" in capsys.readouterr().err


# -- bad inputs to the model as a tool: one line naming the flag or file, before any image is predicted ----------


def _predict_args(trained, images, out, *extra):
    return [
        "predict",
        "--model",
        str(trained / "m" / "model.pt"),
        "--images",
        str(images),
        "--out",
        str(out),
        *map(str, extra),
    ]


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def no_predicting(monkeypatch):
    """Fail the test if an image is predicted: path and argument checks must come before the work."""
    import afo.api

    def refuse(*args, **kwargs):
        raise AssertionError("predicted before the arguments were checked")

    monkeypatch.setattr(afo.api.Model, "predict", refuse)


def _read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` read-only; as root (CI), who writes anyway, the permission check is made to see it so."""
    import os

    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and Path(p) != folder)


def test_predict_out_that_is_not_a_writable_regular_file_is_refused_first(
    trained, tmp_path, capsys, monkeypatch, no_predicting
):
    import os

    images = trained / "ds" / "images"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # stands for /dev/null and other devices, which the atomic rename would replace
    err = _one_line_error(capsys, main(_predict_args(trained, images, fifo)))
    assert "--out" in err and "not a regular file" in err and stat.S_ISFIFO(fifo.stat().st_mode)
    err = _one_line_error(capsys, main(_predict_args(trained, images, tmp_path)))
    assert "is a folder" in err
    (tmp_path / "file").write_text("x")
    err = _one_line_error(capsys, main(_predict_args(trained, images, tmp_path / "file" / "sub" / "p.h5")))
    assert "which is not a folder" in err
    _read_only(monkeypatch, tmp_path / "ro")
    try:
        err = _one_line_error(capsys, main(_predict_args(trained, images, tmp_path / "ro" / "p.h5")))
        assert "not writable" in err
        # --maps: a file, or a read-only folder
        err = _one_line_error(capsys, main(_predict_args(trained, images, tmp_path / "p.h5", "--maps", fifo)))
        assert "--maps" in err and "is not a folder" in err
        err = _one_line_error(
            capsys, main(_predict_args(trained, images, tmp_path / "p.h5", "--maps", tmp_path / "ro" / "maps"))
        )
        assert "--maps" in err and "not writable" in err
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert not (tmp_path / "p.h5").exists()  # nothing was written before the maps folder was checked


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--batch-size", "0"], "batch size 0"),
        (["--device", "tpu"], "device 'tpu': not a device name"),
    ],
    ids=["batch_size_0", "device_tpu"],
)
def test_predict_bad_arguments_are_one_line(trained, tmp_path, capsys, no_predicting, extra, match):
    err = _one_line_error(capsys, main(_predict_args(trained, trained / "ds" / "images", tmp_path / "p.h5", *extra)))
    assert match in err


def test_weights_for_a_model_without_a_weights_file_is_refused(trained, tmp_path):
    """--weights on a model whose backbone used no local file would silently change its predictions."""
    from dataclasses import replace

    import afo

    content = read_model_file(trained / "m" / "model.pt")
    backbone = replace(content.inputs.backbone, weights_file=None, weights_sha256=None)
    save_model(tmp_path / "random.pt", replace(content, inputs=replace(content.inputs, backbone=backbone)))
    assert afo.load(tmp_path / "random.pt").subjects
    with pytest.raises(WeightsFileError, match="used no local weights file.*leave it out"):
        afo.load(tmp_path / "random.pt", weights=trained / "backbone.pth")


def test_broken_links_empty_and_wrong_images_are_named(trained, tmp_path, capsys):
    import afo

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(next((trained / "ds" / "images").glob("*.png")).read_bytes())
    (folder / "b.png").symlink_to(tmp_path / "gone.png")
    err = _one_line_error(capsys, main(_predict_args(trained, folder, tmp_path / "p.h5")))
    assert "b.png" in err and "broken symbolic link" in err
    m = afo.load(trained / "m" / "model.pt", device="cpu")
    for images, match in [
        (np.zeros((0, 0, 3), np.uint8), r"image 0: is empty \(0 x 0 px\)"),
        ([folder / "a.png", np.zeros((4, 0, 3), np.uint8)], "image 1: is empty"),
        ([folder / "a.png", 3], "image 1: got int"),
        (7, "images: got int"),
        ({"a": 1}, "images: got dict"),
    ]:
        with pytest.raises(afo.api.ImageInputError, match=match):
            m.predict(images, subject="tiny/subj01")
    with pytest.raises(afo.api.ImageInputError, match="batch size 0"):
        m.predict([folder / "a.png"], batch_size=0)


def test_decompression_bomb_image_names_the_file(trained, tmp_path, monkeypatch):
    import afo

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # PIL refuses more than twice this many pixels
    Image.new("RGB", (20, 20)).save(tmp_path / "huge.png")
    m = afo.load(trained / "m" / "model.pt", device="cpu")
    with pytest.raises(afo.errors.UserError, match=r"huge\.png: too many pixels"):
        m.predict([tmp_path / "huge.png"])


def test_a_subject_named_twice_is_predicted_and_reported_once(trained, tmp_path, capsys):
    args = _predict_args(trained, trained / "ds" / "images", tmp_path / "p.h5", "--device", "cpu")
    assert main([*args, "--subject", "tiny/subj02", "--subject", "tiny/subj02"]) == 0
    assert json.loads(capsys.readouterr().out)["subjects"] == 1
    assert list(read_predictions(tmp_path / "p.h5")) == ["tiny/subj02"]


def test_decode_refuses_responses_that_do_not_fit_before_predicting(trained, tmp_path, capsys, no_predicting):
    base = ["decode", "--model", str(trained / "m" / "model.pt"), "--images", str(trained / "ds" / "images")]
    base += ["--subject", "tiny/subj01", "--device", "cpu", "--response", str(tmp_path / "r.npy")]
    for response, match in [
        (np.ones(10, np.float32), "every matched value is 1"),
        (np.full(10, np.nan, np.float32), "0 finite value"),
        (np.arange(12, dtype=np.float32), "12 voxels.*10 modelled voxels of 10"),
        (np.arange(10) + 1j, "complex"),
    ]:
        np.save(tmp_path / "r.npy", response)
        assert match and re.search(match, _one_line_error(capsys, main(base)))
    (tmp_path / "r.npy").write_text("0.1 0.2\n")
    assert "not a readable .npy" in _one_line_error(capsys, main(base))


def test_finetune_checks_its_settings_and_prepares_a_changed_dataset_again(trained, tmp_path, capsys, caplog):
    """--train-config is checked before any work; a rerun after the dataset changed fits the new data, and a
    subject without validation images gets 10 % of its training images held out (logged, recorded)."""
    import logging
    import shutil

    from conftest import write_folder_dataset

    def lab_dataset(subject: str, n_val: int, seed: int) -> Path:
        shutil.rmtree(tmp_path / "lab", ignore_errors=True)
        lab = write_folder_dataset(
            tmp_path / "lab", n_images=30, n_voxels=8, subjects=(subject,), n_repeated=4, n_val=n_val, seed=seed
        )
        (lab / "dataset.yaml").write_text("name: newlab\nmodality: fmri\n")
        return lab

    lab, out = lab_dataset("subj01", n_val=6, seed=5), tmp_path / "ft" / "model.pt"
    args = ["finetune", "--model", str(trained / "m" / "model.pt"), "--dataset", str(lab), "--out", str(out)]
    args += ["--device", "cpu", "--train-config"]
    for bad, match in [({"max_epoch": 2}, "max_epoch"), ({"max_epochs": -1}, "max_epochs"), ({"lr": "fast"}, "lr")]:
        err = _one_line_error(capsys, main([*args, json.dumps(bad)]))
        assert "--train-config" in err and match in err
    assert not out.parent.exists()  # refused before anything was prepared
    caplog.set_level(logging.WARNING, logger="afo")
    assert main([*args, json.dumps({"max_epochs": 1})]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{\n") :])["new_subjects"] == ["newlab/subj01"]
    lab_dataset("subj02", n_val=0, seed=6)  # the dataset changed: another subject, and no validation images
    assert main([*args, json.dumps({"max_epochs": 1})]) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index("{\n") :])
    assert report["new_subjects"] == ["newlab/subj02"] and report["held_out_val_images"] == {"newlab/subj02": 3}
    assert "newlab/subj02: fewer than 3 validation images; held out 3 of its 26 training images (10%)" in caplog.text
    assert sorted(read_model_file(out).voxels) == ["newlab/subj02", "tiny/subj01", "tiny/subj02"]
