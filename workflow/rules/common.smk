# Helpers shared by every stage: config validation and the file lists rules ask for.
# Rules stay declarative; everything computed about paths lives here (snakemake-workflows manner).
import json
from pathlib import Path

import pandas as pd

from afo.config import train_params, validate_config

validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))

DATASETS = config["datasets"]
TRAIN_DATASETS = sorted(n for n, d in DATASETS.items() if d["role"] == "train")
AFO = config["afo"]
COMPUTE = config["compute"]
TRAIN_THREADS = COMPUTE["train_threads"]
TRAIN_MEM_MB = COMPUTE["train_mem_mb"]
RECIPES = ["afo"] + (["randroi"] if AFO["baselines"]["randroi"] else [])
LAST_STAGE2 = "stage2plus" if AFO["s2_plus_one"] else "stage2"


wildcard_constraints:
    dataset="|".join(sorted(DATASETS)),
    recipe="afo|randroi",
    seed=r"\d+",
    roi=r"[A-Za-z0-9_\-]+",
    stage2="stage2|stage2plus",


def as_json(value) -> str:
    """Stable JSON of a config section: a changed value changes the params and reruns the job."""
    return json.dumps(value, sort_keys=True)


# -- data ----------------------------------------------------------------------------------------------


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


def dataset_options(wildcards) -> str:
    return as_json(DATASETS[wildcards.dataset]["options"])


def train_stores() -> list:
    return expand("results/prepared/{dataset}.h5", dataset=TRAIN_DATASETS)


def train_features() -> list:
    return expand("results/features/{dataset}.h5", dataset=TRAIN_DATASETS)


def data_args() -> str:
    """--store/--features arguments naming every training dataset."""
    return " ".join(
        f"--store {d}=results/prepared/{d}.h5 --features {d}=results/features/{d}.h5" for d in TRAIN_DATASETS
    )


# -- training ------------------------------------------------------------------------------------------


def stage_params(stage: str) -> str:
    return as_json(train_params(config, stage))


def stage0_params(wildcards) -> str:
    """Stage-0 seeds share the initialisation (train.seed) and differ in batch order (data_seed), so their
    head weights stay comparable and can be averaged for the veROI clustering."""
    params = train_params(config, "stage0")
    params["data_seed"] = params["seed"] + int(wildcards.seed)
    return as_json(params)


STAGE0_MODELS = expand("results/models/stage0/seed{seed}/model.pt", seed=range(AFO["stage0_seeds"]))
NAIVEMIX_MODEL = "results/models/stage0/seed0/model.pt"


def neck_init_arg() -> str:
    """Paper 4.6: RetinaMapper/LayerSelector MLPs pre-trained by an all-ROI model, frozen in the recipe."""
    return f"--neck-init {NAIVEMIX_MODEL}" if AFO["pretrained_neck"] else ""


def neck_init_input(wildcards) -> list:
    return [NAIVEMIX_MODEL] if AFO["pretrained_neck"] else []


# -- ROIs ----------------------------------------------------------------------------------------------


def roi_table_path(recipe: str) -> str:
    """The ROI table a recipe uses: the configured source for afo, random ROIs of the same sizes for randroi."""
    return "results/rois/random.csv" if recipe == "randroi" else f"results/rois/{AFO['roi_source']}.csv"


def roi_table(wildcards) -> str:
    return roi_table_path(wildcards.recipe)


def roi_ids(recipe: str) -> list:
    """ROI labels of a recipe. Known before anything runs for veROIs cut into n_rois (labels 0..n-1);
    otherwise (dataset labels, a height threshold) read from the table once its checkpoint has run."""
    source = "random" if recipe == "randroi" else AFO["roi_source"]
    if source in ("veroi", "random") and AFO["veroi"]["n_rois"] is not None:
        return [str(i) for i in range(AFO["veroi"]["n_rois"])]
    table = checkpoints.dataset_rois.get().output[0] if source == "dataset" else checkpoints.veroi.get().output.table
    return sorted(pd.read_csv(table, dtype={"roi": str})["roi"].unique())


def stage1_dk(wildcards) -> list:
    return expand("results/models/{recipe}/stage1/roi{roi}/dk.h5", recipe=wildcards.recipe, roi=roi_ids(wildcards.recipe))


def stage2_dk_source(wildcards) -> list:
    """Stage 2 distils stage-1 dark knowledge; the extra iteration (S2+1) distils stage 2's."""
    source = "stage1" if wildcards.stage2 == "stage2" else "stage2"
    return expand("results/models/{recipe}/{source}/roi{roi}/dk.h5", recipe=wildcards.recipe, source=source, roi=roi_ids(wildcards.recipe))


def stage3_dk(wildcards) -> list:
    return expand("results/models/{recipe}/{stage}/roi{roi}/dk.h5", recipe=wildcards.recipe, stage=LAST_STAGE2, roi=roi_ids(wildcards.recipe))


# -- evaluation ----------------------------------------------------------------------------------------

# Model names of results/encoding/{name}: (recipe, stage) or a single model file.
ASSEMBLED = {"stage1": ("afo", "stage1"), "stage2": ("afo", LAST_STAGE2)}
if AFO["s2_plus_one"]:
    ASSEMBLED["stage2_once"] = ("afo", "stage2")
if AFO["baselines"]["nodk"]:
    ASSEMBLED["nodk"] = ("afo", "nodk")
if AFO["baselines"]["randroi"]:
    ASSEMBLED["randroi_stage1"] = ("randroi", "stage1")
    ASSEMBLED["randroi_stage2"] = ("randroi", LAST_STAGE2)
SINGLE = {"afo": "results/models/afo/stage3/model.pt"}
if AFO["baselines"]["naivemix"]:
    SINGLE["naivemix"] = NAIVEMIX_MODEL
if AFO["baselines"]["randroi"]:
    SINGLE["randroi"] = "results/models/randroi/stage3/model.pt"
for _name in config["ablations"]:
    SINGLE[_name] = f"results/models/ablation/{_name}/model.pt"
EVALUATED = list(SINGLE) + list(ASSEMBLED)


wildcard_constraints:
    name="|".join(EVALUATED),
    ablation="|".join(config["ablations"]) or "^$",


def evaluation_models(wildcards) -> list:
    if wildcards.name in SINGLE:
        return [SINGLE[wildcards.name]]
    recipe, stage = ASSEMBLED[wildcards.name]
    return expand("results/models/{recipe}/{stage}/roi{roi}/model.pt", recipe=recipe, stage=stage, roi=roi_ids(recipe))


def evaluation_rois(wildcards) -> list:
    """The ROI table (for the roi column, and to assemble per-ROI models)."""
    recipe = ASSEMBLED[wildcards.name][0] if wildcards.name in ASSEMBLED else ("randroi" if wildcards.name == "randroi" else "afo")
    return [roi_table_path(recipe)]


def evaluation_model_args(wildcards, input) -> str:
    if wildcards.name in SINGLE:
        return f"--model {input.models[0]}"
    return " ".join(f"--model {Path(m).parent.name.removeprefix('roi')}={m}" for m in input.models)


# Later stages (analysis.smk) append their final files here.
ANALYSIS_TARGETS: list = []


def all_targets() -> list:
    targets = expand("results/encoding/{name}/summary.csv", name=EVALUATED)
    targets.append("results/encoding/comparison.csv")
    return targets + ANALYSIS_TARGETS
