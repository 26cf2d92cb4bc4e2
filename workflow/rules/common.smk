# Helpers shared by every stage: config validation and the file lists rules ask for.
import json

from afo.config import train_params, validate_config

validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))

DATASETS = config["datasets"]
TRAIN_DATASETS = sorted(n for n, d in DATASETS.items() if d["role"] == "train")


wildcard_constraints:
    dataset="|".join(sorted(DATASETS)),


def as_json(value) -> str:
    """Stable JSON of a config section: a changed value changes the params and reruns the job."""
    return json.dumps(value, sort_keys=True)


def backbone_params() -> dict:
    """What the feature cache depends on: model, layers, resolution, weights; not batch size or device."""
    b = config["backbone"]
    return {k: b[k] for k in ("name", "layers", "resolution", "pretrained", "pretrained_path", "model_kwargs")}


def prepare_input(wildcards):
    """Synthetic datasets depend on the simulator's output; real ones are read in place from their root."""
    if DATASETS[wildcards.dataset]["format"] == "synthetic":
        return "resources/synthetic"
    return []


def dataset_root(wildcards) -> str:
    ds = DATASETS[wildcards.dataset]
    return f"resources/synthetic/{ds['part']}" if ds["format"] == "synthetic" else ds["root"]


def dataset_format(wildcards) -> str:
    fmt = DATASETS[wildcards.dataset]["format"]
    return "folder" if fmt == "synthetic" else fmt


def all_targets() -> list:
    return expand("results/features/{dataset}.h5", dataset=sorted(DATASETS))
