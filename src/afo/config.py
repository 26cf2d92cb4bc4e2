"""Workflow configuration: validation against the JSON schema with defaults filled in, and clear errors."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import yaml

from afo.errors import ConfigError

SCHEMA_RELATIVE = Path("workflow") / "schemas" / "config.schema.yaml"


def find_schema(start: Path | None = None) -> Path:
    """The schema of the checkout this package runs from (or above ``start``)."""
    candidates = [start] if start else []
    candidates += [Path.cwd(), Path(__file__).resolve().parents[2]]
    for base in candidates:
        for folder in [base, *base.parents]:
            path = folder / SCHEMA_RELATIVE
            if path.is_file():
                return path
    raise FileNotFoundError(f"cannot find {SCHEMA_RELATIVE}; run from the afo checkout or pass the schema path")


def _with_defaults(validator_class):
    """A validator that fills `default` values of missing properties (before checking them)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hint = f"; valid keys here: {allowed}" if allowed else ""
        where = path if path != "<top level>" else "top level"
        return (
            f"config key(s) {[f'{path}.{k}' if path != '<top level>' else k for k in extra]} unknown at {where}{hint}"
        )
    if error.validator == "required":
        return f"config section `{path}`: {error.message}"
    if error.validator == "enum":
        return f"config key `{path}`: {error.instance!r} is not one of {error.validator_value}"
    if error.validator == "type":
        return f"config key `{path}`: {error.instance!r} is not of type {error.validator_value}"
    return f"config key `{path}`: {error.message}"


# YAML 1.1 (PyYAML, and so Snakemake) reads 1e-3 as a string: it wants 1.0e-3. A user who writes lr: 1e-3 means
# the number, so exponent-form strings are read as numbers before validation.
_EXPONENT_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _numbers_from_strings(value):
    """``value`` with every exponent-form numeric string (e.g. "1e-3") replaced by its float, recursively."""
    if isinstance(value, dict):
        return {k: _numbers_from_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_from_strings(v) for v in value]
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value.strip()):
        return float(value)
    return value


def validate_config(config: dict, schema_path: str | Path | None = None) -> dict:
    """Validate ``config`` in place (defaults filled in) and return it; raise ConfigError listing every problem."""
    converted = _numbers_from_strings(config)
    config.clear()
    config.update(converted)
    schema_path = Path(schema_path) if schema_path else find_schema()
    schema = yaml.safe_load(schema_path.read_text())
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n  - ".join(_describe(e) for e in errors)
        raise ConfigError(f"invalid configuration ({len(errors)} problem(s)):\n  - {lines}")
    check_config(config)
    return config


def validate_section(section: dict, definition: str, where: str, schema_path: str | Path | None = None) -> dict:
    """``section`` checked against the schema's ``definitions.<definition>`` (e.g. ``train_overrides`` for
    ``afo finetune --train-config``); a :class:`ConfigError` naming ``where`` lists every problem on one line."""
    section = _numbers_from_strings(section)
    schema = yaml.safe_load((Path(schema_path) if schema_path else find_schema()).read_text())
    validator = jsonschema.Draft202012Validator(schema["definitions"][definition])
    errors = sorted(validator.iter_errors(section), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError(f"{where}: " + "; ".join(_describe(e) for e in errors))
    return section


NAIVEMIX_MODEL = "results/models/stage0/seed0/model.pt"


def last_stage2(config: dict) -> str:
    """The stage whose per-ROI models stage 3 distils: stage2, or the extra iteration (S2+1) when configured."""
    return "stage2plus" if config["afo"]["s2_plus_one"] else "stage2"


def single_models(config: dict) -> dict[str, str]:
    """Evaluated models of a run that are one model file each: name (results/encoding/{name}) -> that file."""
    baselines = config["afo"]["baselines"]
    single = {"afo": "results/models/afo/stage3/model.pt"}
    if baselines["naivemix"]:
        single["naivemix"] = NAIVEMIX_MODEL
    if baselines["randroi"]:
        single["randroi"] = "results/models/randroi/stage3/model.pt"
    for name in config["ablations"]:
        single[name] = f"results/models/ablation/{name}/model.pt"
    return single


def assembled_models(config: dict) -> dict[str, tuple[str, str]]:
    """Evaluated models of a run assembled from per-ROI models: name -> (recipe, stage) of those models."""
    last, baselines = last_stage2(config), config["afo"]["baselines"]
    assembled = {"stage1": ("afo", "stage1"), "stage2": ("afo", last)}
    if config["afo"]["s2_plus_one"]:
        assembled["stage2_once"] = ("afo", "stage2")
    if baselines["nodk"]:
        assembled["nodk"] = ("afo", "nodk")
    if baselines["randroi"]:
        assembled["randroi_stage1"] = ("randroi", "stage1")
        assembled["randroi_stage2"] = ("randroi", last)
    return assembled


# Formats whose stores hold test trials only: scored with another dataset's heads, never trained, probed or
# fine-tuned on (no training images).
TEST_ONLY_FORMATS = ("nsd_synthetic",)
# The nsd_synthetic adapter's default heads_of (afo.data.nsd_synthetic.DEFAULTS, which this layer cannot import;
# a test checks that they agree).
HEADS_OF_DEFAULT = "nsd"


def ood_pairs(config: dict) -> dict[str, str]:
    """holdout -> the training dataset whose subjects' heads score it, for the test-only holdouts (NSD-synthetic's
    ``options.heads_of``, default as the adapter's): :mod:`afo.evaluation.ood`."""
    return {
        name: str((ds.get("options") or {}).get("heads_of", HEADS_OF_DEFAULT))
        for name, ds in sorted(config["datasets"].items())
        if ds["format"] in TEST_ONLY_FORMATS
    }


def ood_prediction_path(model: str | Path, holdout: str) -> Path:
    """Where a model's predictions of a holdout store live: ``ood_<holdout>.h5`` beside the model file (the
    workflow's rule predict_ood writes it, rule ood reads it)."""
    return Path(model).with_name(f"ood_{holdout}.h5")


def check_config(config: dict) -> None:
    """Every rule a config must meet that the schema cannot say, on a config the schema has validated (defaults
    filled in). :func:`validate_config` runs it, so the workflow (common.smk) and ``afo check-config`` both do:
    a mistake fails before anything runs, with a message that names the config key and the fix."""
    _check_datasets(config)
    _check_model_names(config)
    _check_finetune(config)


def _check_datasets(config: dict) -> None:
    for name, ds in config["datasets"].items():
        if ds["format"] == "synthetic" and "part" not in ds:
            raise ConfigError(f"config key `datasets.{name}.part`: required for format synthetic (fmri or eeg)")
        if ds["format"] == "synthetic":
            # The simulator writes one folder per simulated dataset (simulate.options.datasets), or fmri/eeg.
            simulated = (config.get("simulate", {}).get("options") or {}).get("datasets") or []
            parts = [d.get("name") for d in simulated if isinstance(d, dict)] or ["fmri", "eeg"]
            if ds["part"] not in parts:
                raise ConfigError(
                    f"config key `datasets.{name}.part`: {ds['part']!r} is not a simulated dataset; one of {parts}"
                )
        if ds["format"] != "synthetic" and "root" not in ds:
            raise ConfigError(
                f"config key `datasets.{name}.root`: required for format {ds['format']} (the downloaded folder)"
            )
    if not any(ds["role"] == "train" for ds in config["datasets"].values()):
        raise ConfigError("config key `datasets`: at least one dataset needs role: train")
    for name, heads_of in ood_pairs(config).items():
        if config["datasets"][name]["role"] != "holdout":
            raise ConfigError(
                f"config key `datasets.{name}.role`: format {config['datasets'][name]['format']} has test trials "
                "only, so it can only be a holdout"
            )
        ds = config["datasets"].get(heads_of)
        if ds is None or ds["role"] != "train" or ds["format"] != "nsd":
            raise ConfigError(
                f"config key `datasets.{name}.options.heads_of`: {heads_of!r} must name a dataset of `datasets:` "
                "with format nsd and role train (its subjects' heads score this holdout)"
            )
    veroi = config["afo"]["veroi"]
    if (veroi["n_rois"] is None) == (veroi["threshold"] is None):
        raise ConfigError(
            "config keys `afo.veroi.n_rois` / `afo.veroi.threshold`: set exactly one of them (the other to null)"
        )
    # Checked before any planning: the DAG has jobs per veROI, so an absurd count would cost minutes and GBs.
    if veroi["n_rois"] is not None and veroi["n_rois"] > veroi["n_kmeans"]:
        raise ConfigError(
            f"config key `afo.veroi.n_rois`: {veroi['n_rois']} veROIs cannot be cut from {veroi['n_kmeans']} k-means "
            "clusters (`afo.veroi.n_kmeans`); lower n_rois or raise n_kmeans (each veROI adds stage-1/2 jobs)"
        )


def _check_model_names(config: dict) -> None:
    """Model names the analysis sections refer to must be evaluated models (a typo fails before anything runs)."""
    single = single_models(config)
    evaluated = list(single) + list(assembled_models(config))
    for key, names in (
        ("evaluation.figure_models", config["evaluation"]["figure_models"]),
        ("decoding.models", config["decoding"]["models"]),
    ):
        unknown = [n for n in names if n not in evaluated]
        if unknown:
            raise ConfigError(f"config key `{key}`: {unknown} not among the evaluated models {evaluated}")
    for label, spec in config["probing"]["extractors"].items():
        if spec["source"] == "timm" and not spec.get("name"):
            raise ConfigError(f"config key `probing.extractors.{label}.name`: source timm needs a timm model name")
        if spec["source"] == "model" and spec.get("model") not in single:
            raise ConfigError(
                f"config key `probing.extractors.{label}.model`: {spec.get('model')!r} is not one of the single models "
                f"{list(single)} (per-ROI models assembled share no core)"
            )


def _check_finetune(config: dict) -> None:
    """Fine-tuning fits datasets the recipe did not train on, on the core of a single evaluated model."""
    finetune, datasets = config["finetune"], config["datasets"]
    if not finetune["enabled"]:
        return
    single = single_models(config)
    if finetune["model"] not in single:
        raise ConfigError(
            f"config key `finetune.model`: {finetune['model']!r} is not one of the single models {list(single)}"
        )
    if not finetune["datasets"]:
        raise ConfigError("config key `finetune.datasets`: name at least one dataset (role holdout) to fit")
    for name in finetune["datasets"]:
        if name not in datasets or datasets[name]["role"] == "train":
            raise ConfigError(
                f"config key `finetune.datasets`: {name!r} must be a dataset of `datasets:` with role holdout "
                f"(the model already has the training datasets' subjects)"
            )
        if datasets[name]["format"] in TEST_ONLY_FORMATS:
            raise ConfigError(
                f"config key `finetune.datasets`: {name!r} (format {datasets[name]['format']}) has no training "
                "trials to fine-tune on; it is scored with the heads of its `heads_of` dataset instead"
            )


def load_config(path: str | Path, schema_path: str | Path | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no config file here; give the path of a workflow config YAML (e.g. config.yaml)")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    try:
        return validate_config(config, schema_path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def train_params(config: dict, stage: str) -> dict:
    """The training hyperparameters of one stage: `train` with `afo.stages.<stage>` on top."""
    params = dict(config["train"])
    params.update(config["afo"]["stages"].get(stage, {}))
    return params
