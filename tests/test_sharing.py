"""Sharing a model: `afo export` (safetensors + afo_model.json + model card), afo.load of a folder and of a hub name
read offline from a huggingface_hub cache laid out as huggingface_hub lays it out. Nothing touches the network."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import afo
from afo.cli import main
from afo.features import backbone_features, create_backbone
from afo.sharing import HubError
from afo.training.modelfile import (
    BackboneRecord,
    ModelConfig,
    ModelFile,
    ModelFileError,
    ModelInputs,
    Preprocessing,
    SubjectRecord,
    backbone_normalisation,
    save_model,
)
from afo.training.modelfolder import read_model_folder

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = BackboneRecord(
    "vit_tiny_patch16_224", (0, 1), 16, {"patch_size": 4, "depth": 2, "embed_dim": 24, "num_heads": 2}
)
TERMS = "CC BY 4.0 (doi:10.0000/lab-data); stimuli from the lab's own photographs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A small model file on a random-init backbone (perturbed weights: predictions vary by image and voxel), a
    folder dataset with its terms, a config naming it and an evaluation summary of the model."""
    from conftest import write_folder_dataset

    root = tmp_path_factory.mktemp("sharing")
    ds = write_folder_dataset(root / "ds", n_images=6, n_voxels=7, subjects=("subj01",))
    (ds / "dataset.yaml").write_text(f"name: tiny\nmodality: fmri\nvisual_angle: 8.0\nterms: {TERMS}\n")
    spec = BACKBONE.spec()
    layers = backbone_features(create_backbone(spec), np.zeros((1, 16, 16, 3), np.uint8), spec, torch.device("cpu"))
    config = ModelConfig.from_dict(
        {"conv_width": 8, "out_dim": 8, "n_convs": 1, "kernel_size": 3, "pe_frequencies": 4, "mlp_width": 16}
    )
    torch.manual_seed(0)
    coords = {"tiny/subj01": torch.randn(7, 3) * 10}
    model = config.build([tuple(f.shape[1:]) for f in layers], coords)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    mean, std = backbone_normalisation(BACKBONE)
    inputs = ModelInputs(
        BACKBONE,
        Preprocessing(12, mean, std),
        {
            "tiny/subj01": SubjectRecord(
                "tiny", "subj01", "fmri", rois={"roi": ["early"] * 4 + ["late"] * 3}, n_voxels=7
            )
        },
    )
    train = {"lr": 0.01, "seed": 0}
    info = {"val_r": 0.25, "spec": json.dumps({"train": train})}
    models = root / "results" / "models" / "afo" / "stage3"
    models.mkdir(parents=True)
    save_model(models / "model.pt", ModelFile.of(model, config, {"tiny/subj01": torch.arange(7)}, info, inputs))
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["datasets"] = {"tiny": {"format": "folder", "root": str(ds), "role": "train"}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = root / "summary.csv"
    summary.write_text(
        "dataset,subject,roi,n_voxels,mean_r_test,median_r_test_norm,n_test_images,n_test_left_out\n"
        "tiny,subj01,all,7,0.4321,,4,0\ntiny,subj01,early,4,0.5,,4,0\nother,subj01,all,9,0.9,,4,0\n"
    )
    return root


def _export(shared: Path, out: Path, *extra: str) -> int:
    model = shared / "results" / "models" / "afo" / "stage3" / "model.pt"
    return main(["export", str(model), "--out", str(out), *extra])


def _images(shared: Path) -> list[Path]:
    return sorted((shared / "ds" / "images").glob("*.png"))


def test_export_writes_weights_record_and_card_that_predict_bit_for_bit(shared, tmp_path, capsys):
    out = tmp_path / "hub"
    code = _export(shared, out, "--summary", str(shared / "summary.csv"), "--config", str(shared / "config.yaml"))
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "afo_model.json", "model.safetensors"]
    record = json.loads((out / "afo_model.json").read_text())
    assert record["subjects"]["tiny/subj01"]["visual_angle_deg"] == 8.0
    assert record["model_file"]["backbone"]["name"] == BACKBONE.name  # the backbone spec, readable as text
    original = afo.load(shared / "results" / "models" / "afo" / "stage3" / "model.pt", device="cpu")
    folder = afo.load(out, device="cpu")
    assert folder.subjects == original.subjects == ["tiny/subj01"]
    a = original.predict(_images(shared), subject="tiny/subj01")
    b = folder.predict(_images(shared), subject="tiny/subj01")
    assert a.dtype == b.dtype == np.float32 and a.std() > 0
    assert np.array_equal(a, b)  # bit for bit
    assert folder.voxels("tiny/subj01").equals(original.voxels("tiny/subj01"))


def test_card_front_matter_names_datasets_terms_scores_backbone_and_recipe(shared, tmp_path):
    out = tmp_path / "hub"
    assert _export(shared, out, "--summary", str(shared / "summary.csv"), "--config", str(shared / "config.yaml")) == 0
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "afo" and meta["license"] == "other" and "fmri" in meta["tags"]
    (dataset,) = meta["training_datasets"]
    assert dataset == {
        "name": "tiny",
        "format": "folder",
        "modality": "fmri",
        "subjects": ["subj01"],
        "visual_angle_deg": 8.0,
        "terms": TERMS,
    }
    assert meta["scores"] == [
        {
            "dataset": "tiny",
            "subject": "subj01",
            "n_voxels": 7,
            "mean_r_test": 0.4321,
            "n_test_images": 4,
            "n_test_left_out": 0,
        }
    ]
    assert set(meta["score_definitions"]) == {"n_voxels", "mean_r_test", "n_test_images", "n_test_left_out"}
    assert meta["backbone"]["licence"].startswith("none: random initialisation")
    assert meta["recipe"]["model"] == "afo/stage3" and meta["recipe"]["train"] == {"lr": 0.01, "seed": 0}
    assert len(meta["config_sha256"]) == 64 and meta["afo_version"] == afo.__version__
    assert meta["subjects"] == ["tiny/subj01"] and "tiny/subj01" in meta["spaces"]
    assert TERMS in text and "## Intended use" in text and "0.4321" in text  # the body says it for people


def test_card_without_config_says_terms_are_not_stated_and_adapters_state_theirs(shared, tmp_path):
    from afo.data.registry import FORMATS, get_adapter

    assert _export(shared, tmp_path / "hub") == 0
    meta = yaml.safe_load((tmp_path / "hub" / "README.md").read_text().split("---\n")[1])
    assert meta["training_datasets"][0]["terms"].startswith("not stated") and meta["scores"] == []
    assert all(get_adapter(fmt).terms for fmt in FORMATS)  # every format states the terms its data carry


def _hub_cache(cache: Path, repo: str, folder: Path, commit: str, ref: str = "main") -> None:
    """huggingface_hub's cache layout: blobs named by hash, snapshots/<commit>/ of links to them, refs/<ref>."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    (base / "snapshots" / commit).mkdir(parents=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / ref).write_text(commit)
    for file in folder.iterdir():
        blob = base / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (base / "snapshots" / commit / file.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An offline huggingface_hub on a cache in tmp_path; any network use would fail (endpoint on a closed port)."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    for name, value in (("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", "http://127.0.0.1:9")):
        monkeypatch.setenv(name, value)
    # huggingface_hub reads its environment once, at import: set what it read.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_name_loads_offline_from_the_cache_and_predicts_bit_for_bit(shared, tmp_path, offline_hub):
    out = tmp_path / "hub"
    assert _export(shared, out) == 0
    commit = "0123456789abcdef0123456789abcdef01234567"
    _hub_cache(offline_hub, "lab/afo-tiny", out, commit)
    original = afo.load(shared / "results" / "models" / "afo" / "stage3" / "model.pt", device="cpu")
    expected = original.predict(_images(shared), subject="tiny/subj01")
    for name in ("hf://lab/afo-tiny", f"hf://lab/afo-tiny@{commit}"):
        model = afo.load(name, device="cpu")
        assert model.path == offline_hub / "models--lab--afo-tiny" / "snapshots" / commit
        assert np.array_equal(model.predict(_images(shared), subject="tiny/subj01"), expected)
    with pytest.raises(HubError, match="not in huggingface_hub's cache"):
        afo.load("hf://lab/absent", device="cpu")
    with pytest.raises(HubError, match="not a hub model name"):
        afo.load("hf://no-slash", device="cpu")


def test_damaged_or_mixed_folders_are_refused(shared, tmp_path):
    out = tmp_path / "hub"
    assert _export(shared, out) == 0
    record = json.loads((out / "afo_model.json").read_text())
    record["model_file"]["preprocessing"]["image_size"] = 13
    (out / "afo_model.json").write_text(json.dumps(record))
    with pytest.raises(ModelFileError, match="checksum"):
        read_model_folder(out)
    assert _export(shared, out) == 0
    (out / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelFileError, match="SHA-256 differs"):
        read_model_folder(out)
    with pytest.raises(ModelFileError, match="no afo_model.json"):
        read_model_folder(tmp_path)


def test_export_errors_are_one_line(shared, tmp_path, capsys):
    assert _export(shared, tmp_path / "a", "--summary", str(tmp_path / "absent.csv")) == 2
    assert "--summary" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    other.write_text("dataset,subject,roi,n_voxels,mean_r_test\nother,subj01,all,9,0.9\n")
    assert _export(shared, tmp_path / "b", "--summary", str(other)) == 2
    assert "no row (roi all) for any of the model's subjects" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert _export(shared, tmp_path / "file" / "out") == 2


def test_folder_dataset_terms_must_be_a_string(folder_dataset):
    from afo.data.folder import FolderDatasetError, read_dataset_yaml, terms_of

    assert terms_of({"root": str(folder_dataset)}) is None
    (folder_dataset / "dataset.yaml").write_text("name: tiny\nmodality: fmri\nterms: [a, b]\n")
    with pytest.raises(FolderDatasetError, match="field `terms`"):
        read_dataset_yaml(folder_dataset)
