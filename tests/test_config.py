import copy
import re
from pathlib import Path

import pytest
import yaml

from afo.cli import main
from afo.config import ConfigError, load_config, train_params, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_default_config_is_valid_and_defaults_are_filled(config):
    config["train"].pop("patience")
    validated = validate_config(config)
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert validated["train"]["patience"] == schema["properties"]["train"]["properties"]["patience"]["default"]
    assert validated["afo"]["stages"]["stage3"] == {}


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("train", "lrr"), 0.1, r"\['train.lrr'\] unknown at train; valid keys here: \[.*'lr'"),
        (("modle",), {}, r"\['modle'\] unknown at top level"),
        (("model", "sigma"), "small", r"`model.sigma`: 'small' is not of type number"),
        (("model", "retina_mapper"), "fixed", r"`model.retina_mapper`: 'fixed' is not one of"),
        (("afo", "stages", "stage3", "learning_rate"), 1.0, r"afo.stages.stage3.learning_rate"),
    ],
)
def test_bad_key_is_named(config, path, value, message):
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_semantic_rules(config):
    bad = copy.deepcopy(config)
    bad["afo"]["veroi"]["threshold"] = 1.0
    with pytest.raises(ConfigError, match="set exactly one"):
        validate_config(bad)
    bad = copy.deepcopy(config)
    bad["datasets"]["mine"] = {"format": "nsd"}
    with pytest.raises(ConfigError, match=r"datasets.mine.root"):
        validate_config(bad)
    # A synthetic dataset's part must be one of the simulated datasets (or fmri/eeg without them).
    bad = copy.deepcopy(config)
    bad["datasets"]["synth_holdout"]["part"] = "holdot"
    with pytest.raises(ConfigError, match=r"datasets.synth_holdout.part.*'holdot' is not a simulated dataset"):
        validate_config(bad)


def test_stage_overrides(config):
    config.setdefault("afo", {}).setdefault("stages", {})["stage3"] = {"lr": 0.001}
    validate_config(config)
    assert train_params(config, "stage3")["lr"] == 0.001
    assert train_params(config, "stage1")["lr"] == config["train"]["lr"]


def test_paper_config_is_valid():
    load_config(ROOT / "config" / "paper.yaml")


def test_hetero_config_is_valid_and_simulates():
    from afo.simulate import SimulationConfig

    config = load_config(ROOT / "config" / "hetero.yaml")
    sim = SimulationConfig.from_dict(config["simulate"]["options"])
    parts = {d["part"] for d in config["datasets"].values()}
    assert parts == {d.name for d in sim.datasets} and {d.modality for d in sim.datasets} == {"fmri", "eeg", "meg"}
    assert [n for n, d in config["datasets"].items() if d["role"] == "holdout"] == ["bold"]


def test_check_config_cli(tmp_path, config, capsys):
    config["train"]["bogus"] = 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["check-config", str(tmp_path / "c.yaml")]) == 2
    assert "train.bogus" in capsys.readouterr().err


def test_exponent_strings_are_numbers(config):
    config["train"] = {**config.get("train", {}), "lr": "1e-3", "lambda_entropy": "3E-5"}
    validated = validate_config(config)
    assert validated["train"]["lr"] == 0.001 and validated["train"]["lambda_entropy"] == 3e-5


def test_absurd_veroi_counts_fail_before_planning(config):
    config.setdefault("afo", {})["veroi"] = {"n_kmeans": 64, "n_rois": 3000, "threshold": None}
    with pytest.raises(ConfigError, match="n_rois"):
        validate_config(config)
    config["afo"]["veroi"] = {"n_kmeans": 64, "n_rois": 100, "threshold": None}
    with pytest.raises(ConfigError, match="n_kmeans"):
        validate_config(config)


def test_schema_model_defaults_are_the_models():
    """The schema keeps its `model` defaults (Snakemake and readers of the schema see them), but the model's
    constructor is their home: this fails when one drifts from the other."""
    from afo.model import model_defaults

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    in_schema = {k: v["default"] for k, v in schema["properties"]["model"]["properties"].items()}
    # readout_chunk bounds memory and changes no result: the schema has it under `compute`.
    in_model = {k: v for k, v in model_defaults().items() if k != "readout_chunk"}
    assert in_schema == in_model


@pytest.mark.parametrize(
    "edit, message",
    [
        # Rules the workflow alone checked once: `afo check-config` now fails on them too, naming key and fix.
        (lambda c: c["decoding"].update(models=["afo", "afoo"]), r"`decoding.models`: \['afoo'\] not among"),
        (lambda c: c["evaluation"].update(figure_models=["stage3"]), r"`evaluation.figure_models`: \['stage3'\]"),
        (
            lambda c: c["finetune"].update(enabled=True, model="stage1", datasets=["synth_holdout"]),
            r"`finetune.model`: 'stage1' is not one of the single models",
        ),
        (
            lambda c: c["finetune"].update(enabled=True, model="afo", datasets=[]),
            r"`finetune.datasets`: name at least one dataset",
        ),
        (
            lambda c: c["finetune"].update(enabled=True, model="afo", datasets=["synth_fmri"]),
            r"`finetune.datasets`: 'synth_fmri' must be a dataset of `datasets:` with role holdout",
        ),
        (
            lambda c: c["probing"].update(extractors={"mine": {"source": "model", "model": "stage2"}}),
            r"`probing.extractors.mine.model`: 'stage2' is not one of the single models",
        ),
    ],
)
def test_check_config_runs_the_workflows_checks(tmp_path, config, capsys, edit, message):
    validate_config(config)  # the sections the edits touch, with their defaults
    edit(config)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["check-config", str(tmp_path / "c.yaml")]) == 2
    assert re.search(message, capsys.readouterr().err)
