"""Out-of-distribution scores: NSD-synthetic predicted with the heads of a tiny model trained on NSD, scored beside
NSD's own test split (afo.evaluation.ood), in the package and in the workflow, and the config rules of test-only
holdouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures.formats import IMG, write_nsd, write_nsd_synthetic
from test_analysis_workflow import snakemake

from afo.config import HEADS_OF_DEFAULT, ConfigError, check_config, load_config, ood_pairs
from afo.data.nsd_synthetic import DEFAULTS
from afo.evaluation.ood import OOD_COLUMNS, holdout_voxels, ood_table

ROOT = Path(__file__).resolve().parents[1]
SMALL = yaml.safe_load((ROOT / ".test/small.yaml").read_text())


def _config(datasets: dict, finetune: dict | None = None) -> dict:
    cfg = load_config(ROOT / "config.yaml")
    cfg["datasets"] = datasets
    cfg["finetune"] = {**cfg["finetune"], **(finetune or {})}
    return cfg


def test_ood_pairs_and_config_rules():
    nsd = {"format": "nsd", "root": "x", "role": "train", "options": {}}
    syn = {"format": "nsd_synthetic", "root": "x", "role": "holdout", "options": {"heads_of": "core"}}
    cfg = _config({"core": nsd, "syn": syn})
    assert ood_pairs(cfg) == {"syn": "core"}
    check_config(cfg)
    # heads_of defaults to the adapter's "nsd", which must be a training NSD dataset of the config
    assert HEADS_OF_DEFAULT == DEFAULTS["heads_of"]
    with pytest.raises(ConfigError, match="heads_of"):
        check_config(_config({"core": nsd, "syn": {**syn, "options": {}}}))
    with pytest.raises(ConfigError, match="only be a holdout"):
        check_config(_config({"core": nsd, "syn": {**syn, "role": "train"}}))
    # no training trials to fine-tune on
    cfg = _config({"core": nsd, "syn": syn}, {"enabled": True, "datasets": ["syn"], "model": "naivemix"})
    with pytest.raises(ConfigError, match="no training trials"):
        check_config(cfg)


def test_ood_table_pairs_voxels_of_both():
    inside = pd.DataFrame(
        {
            "dataset": "nsd",
            "subject": ["subj01"] * 4,
            "voxel": [0, 1, 2, 3],
            "roi": ["V1", "V1", "V2", ""],
            "r_test": [0.4, 0.6, 0.2, 0.1],
            "r_test_norm": [0.2, 0.4, 0.1, np.nan],
        }
    )
    outside = inside.assign(dataset="syn", r_test=[0.1, 0.3, np.nan, 0.0], roi=None)
    table = ood_table(inside, outside, {"syn": "nsd"})
    assert list(table.columns) == OOD_COLUMNS
    rows = table.set_index("roi")
    # voxel 2 has no holdout score: left out of both means; voxel 3 has no ROI: only in "all"
    assert rows.loc["V1", "n_voxels"] == 2 and rows.loc["all", "n_voxels"] == 3
    assert rows.loc["V1", "mean_r_in"] == pytest.approx(0.5) and rows.loc["V1", "mean_r_out"] == pytest.approx(0.2)
    assert "V2" not in rows.index
    assert set(table["dataset_in"]) == {"nsd"} and set(table["dataset_out"]) == {"syn"}


@pytest.mark.slow  # trains a tiny model on the NSD fixture: about half a minute on 2 cores
def test_nsd_model_scores_nsd_synthetic(tmp_path):
    import torch

    from afo.data import nsd, nsd_synthetic
    from afo.evaluation.scores import voxel_table
    from afo.features import BackboneSpec, extract_features
    from afo.training.fit import TrainSpec, fit
    from afo.training.predict import predict_file

    write_nsd(tmp_path / "raw", n_sessions=1)
    write_nsd_synthetic(tmp_path / "raw")
    nsd.prepare(tmp_path / "raw", tmp_path / "nsd.h5", image_size=IMG, options={})
    nsd_synthetic.prepare(tmp_path / "raw", tmp_path / "syn.h5", image_size=IMG, options={"heads_of": "core"})
    cfg = load_config(ROOT / "config.yaml")
    spec = BackboneSpec.from_config(SMALL["backbone"])
    torch.manual_seed(0)
    for name in ("nsd", "syn"):
        extract_features(tmp_path / f"{name}.h5", tmp_path / f"{name}_features.h5", spec)
    train = {**cfg["train"], **SMALL["train"], "max_epochs": 2}
    fit(
        TrainSpec(
            stores={"core": str(tmp_path / "nsd.h5")},
            features={"core": str(tmp_path / "nsd_features.h5")},
            model={**cfg["model"], **SMALL["model"]},
            train=train,
        ),
        tmp_path / "m",
    )
    model = tmp_path / "m" / "model.pt"
    predict_file(
        model, {"core": tmp_path / "nsd.h5"}, {"core": tmp_path / "nsd_features.h5"}, ["val", "test"],
        tmp_path / "pred.h5", dtype="float32",
    )  # fmt: skip
    # The holdout under the NSD dataset's name: its subjects are predicted with the NSD subjects' heads.
    predict_file(
        model, {"core": tmp_path / "syn.h5"}, {"core": tmp_path / "syn_features.h5"}, ["test"],
        tmp_path / "ood_syn.h5", dtype="float32",
    )  # fmt: skip
    inside = voxel_table([(model, tmp_path / "pred.h5")], {"core": tmp_path / "nsd.h5"}, dataset_roi_set="streams")
    outside = holdout_voxels([(model, tmp_path / "ood_syn.h5")], "syn", tmp_path / "syn.h5", "core", None, "streams")
    assert set(outside["dataset"]) == {"syn"} and len(outside) == len(inside)
    assert outside["r_val"].isna().all()  # no val trials in a test-only store
    table = ood_table(inside, outside, {"syn": "core"})
    everything = table[table["roi"] == "all"].set_index("subject")
    assert sorted(everything.index) == ["subj01", "subj02"]
    for column in ("mean_r_in", "mean_r_out", "median_r_test_norm_in", "median_r_test_norm_out"):
        assert np.isfinite(everything[column]).all(), column
    assert (everything["n_voxels"] > 0).all()


@pytest.mark.slow  # the workflow on the NSD fixture up to naivemix's ood table: about 2 minutes on 2 cores
def test_workflow_ood_table(tmp_path):
    write_nsd(tmp_path / "raw", n_sessions=1)
    write_nsd_synthetic(tmp_path / "raw")
    config = json.loads(json.dumps(SMALL))
    config["datasets"] = {
        "core": {"format": "nsd", "root": str(tmp_path / "raw"), "role": "train"},
        "syn": {
            "format": "nsd_synthetic",
            "root": str(tmp_path / "raw"),
            "role": "holdout",
            "options": {"heads_of": "core"},
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    planned = snakemake(tmp_path, "-n")
    assert "probing: skipping ['syn']" in planned.stdout + planned.stderr
    assert "results/probing/vit_random/syn.csv" not in planned.stdout
    snakemake(tmp_path, "results/encoding/naivemix/ood.html", "results/data/overlap.csv")
    table = pd.read_csv(tmp_path / "results/encoding/naivemix/ood.csv", dtype={"subject": str, "roi": str})
    assert list(table.columns) == OOD_COLUMNS
    everything = table[table["roi"] == "all"].set_index("subject")
    assert sorted(everything.index) == ["subj01", "subj02"]
    assert set(everything["dataset_in"]) == {"core"} and set(everything["dataset_out"]) == {"syn"}
    assert np.isfinite(everything[["mean_r_in", "mean_r_out"]].to_numpy()).all()
    voxels = pd.read_csv(tmp_path / "results/encoding/naivemix/ood_voxels.csv", dtype={"subject": str})
    assert set(voxels["dataset"]) == {"syn"} and voxels["r_test"].notna().all()
    assert "mean_r_out" in (tmp_path / "results/encoding/naivemix/ood.html").read_text()
