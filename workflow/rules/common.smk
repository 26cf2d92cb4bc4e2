# Helpers shared by every stage: config validation and the file lists rules ask for.
# Rules stay declarative; everything computed about paths lives here (snakemake-workflows manner), and every rule
# runs a thin workflow/scripts/*.py that calls the package. `params:` hold exactly the settings that change a
# rule's outputs; how a job uses the machine (config `compute:`) is read by the job and reruns nothing.
from pathlib import Path

from afo.config import (
    NAIVEMIX_MODEL,
    TEST_ONLY_FORMATS,
    assembled_models,
    last_stage2,
    ood_pairs,
    ood_prediction_path,
    single_models,
    train_params,
    validate_config,
)
from afo.data.manifest import dataset_files, manifest_digest
from afo.data.nsd_prf import has_prf_maps
from afo.data.registry import dataset_root, visual_angle
from afo.io.tables import roi_labels
from snakemake.logging import logger

# The schema, then every rule it cannot say (afo.config.check_config, which `afo check-config` runs too).
validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))

DATASETS = config["datasets"]
TRAIN_DATASETS = sorted(n for n, d in DATASETS.items() if d["role"] == "train")
ALL_DATASETS = sorted(DATASETS)
AFO = config["afo"]
OVERLAP = config["overlap"]
COMPUTE = config["compute"]
TRAIN_THREADS = COMPUTE["train_threads"]
TRAIN_MEM_MB = COMPUTE["train_mem_mb"]
LAST_STAGE2 = last_stage2(config)
SYNTHETIC = {n: str(dataset_root(d)) for n, d in sorted(DATASETS.items()) if d["format"] == "synthetic"}
# Full stimulus width in degrees per dataset (None = image units): ecc_deg / angle_deg in voxels.csv and figures.
VISUAL_ANGLES = {n: visual_angle(d) for n, d in sorted(DATASETS.items())}
# Training NSD datasets (volume spaces) whose download holds pRF maps: the RetinaMap is checked against them.
PRF_DATASETS = [
    n
    for n in TRAIN_DATASETS
    if DATASETS[n]["format"] == "nsd"
    and has_prf_maps(DATASETS[n]["root"], DATASETS[n]["options"].get("space", "func1pt8mm"))
]
# The synthetic checks compare trained models' voxels with the truth: holdout datasets have no such voxels.
SYNTHETIC_TRAIN = {n: p for n, p in SYNTHETIC.items() if n in TRAIN_DATASETS}
# Test-only holdouts (NSD-synthetic) -> the training NSD dataset whose subjects' heads predict them (out of
# distribution, results/encoding/{name}/ood.csv); they have no training images to probe.
OOD = ood_pairs(config)
PROBED = [n for n in ALL_DATASETS if DATASETS[n]["format"] not in TEST_ONLY_FORMATS]
if PROBED != ALL_DATASETS and config["probing"]["enabled"]:
    logger.info(
        f"probing: skipping {sorted(set(ALL_DATASETS) - set(PROBED))} (test trials only, no training images to "
        "fit a probe on; scored out of distribution in results/encoding/<model>/ood.csv instead)"
    )


wildcard_constraints:
    dataset="|".join(ALL_DATASETS),
    recipe="afo|randroi",
    seed=r"\d+",
    roi=r"[A-Za-z0-9_\-]+",
    stage2="stage2|stage2plus",
    holdout="|".join(OOD) or "^$",


# -- data ----------------------------------------------------------------------------------------------


FEATURES_CACHED = config["backbone"]["cache"] == "disk"


def backbone_params() -> dict:
    """What a feature cache depends on: model, layers, resolution, weights (not batch size, device, or where
    features come from: `cache` changes no result)."""
    return {k: v for k, v in config["backbone"].items() if k != "cache"}


def online_backbone() -> dict:
    """The backbone a job runs itself when nothing is cached (backbone.cache: none), as a param (its settings
    change the job's outputs); {} with the disk cache, whose file is the job's input instead."""
    return {} if FEATURES_CACHED else {**backbone_params(), "cache": "none"}


def prepare_input(wildcards) -> list:
    """What a store is made from, so that editing it reruns `prepare`: the simulator's output for a synthetic
    dataset, every file of a folder dataset (small by design); a public dataset is tracked by its manifest."""
    ds = DATASETS[wildcards.dataset]
    if ds["format"] == "synthetic":
        return ["resources/synthetic"]
    return dataset_files(ds["root"]) if ds["format"] == "folder" else []


def dataset_manifest(wildcards) -> str:
    """Paths, sizes and mtimes of a public dataset's files, hashed: a changed file changes prepare's params."""
    ds = DATASETS[wildcards.dataset]
    return manifest_digest(ds["root"]) if ds["format"] not in ("synthetic", "folder") else ""


def dataset_params(wildcards) -> dict:
    """Format, root and adapter options of a dataset (a synthetic one is a folder dataset the simulator wrote)."""
    ds = DATASETS[wildcards.dataset]
    if ds["format"] == "synthetic":
        return {"format": "folder", "root": SYNTHETIC[wildcards.dataset], "options": ds["options"]}
    return {"format": ds["format"], "root": ds["root"], "options": ds["options"]}


def stores(datasets=TRAIN_DATASETS) -> list:
    return expand("results/prepared/{dataset}.h5", dataset=datasets)


def feature_caches(datasets=TRAIN_DATASETS) -> list:
    """The feature caches a job reads; none with backbone.cache: none (the features rule is then never required)."""
    return expand("results/features/{dataset}.h5", dataset=datasets) if FEATURES_CACHED else []


def overlap_input() -> list:
    """overlap.csv for the jobs that leave out shared test images (none when overlap.exclude is off)."""
    return ["results/data/overlap.csv"] if OVERLAP["exclude"] else []


def overlap_trained_on() -> list:
    """The datasets whose training images are left out of other datasets' tests (a param: a role change reruns)."""
    return TRAIN_DATASETS if OVERLAP["exclude"] else []


# -- training ------------------------------------------------------------------------------------------


def stage_params(stage: str) -> dict:
    return train_params(config, stage)


def stage0_params(wildcards) -> dict:
    """Stage-0 seeds share the initialisation (train.seed) and differ in batch order (data_seed), so their
    head weights stay comparable and can be averaged for the veROI clustering."""
    params = train_params(config, "stage0")
    params["data_seed"] = params["seed"] + int(wildcards.seed)
    return params


def ablation_model(wildcards) -> dict:
    """The `model` section with an ablation's model keys on top."""
    ablation = config["ablations"][wildcards.ablation]
    return {**config["model"], **{k: v for k, v in ablation.items() if k not in config["train"]}}


def ablation_train(wildcards) -> dict:
    """Stage-0 training settings with an ablation's train keys on top (NoRegLS: lambda_entropy 0)."""
    ablation = config["ablations"][wildcards.ablation]
    return {**train_params(config, "stage0"), **{k: v for k, v in ablation.items() if k in config["train"]}}


STAGE0_MODELS = expand("results/models/stage0/seed{seed}/model.pt", seed=range(AFO["stage0_seeds"]))


def neck_init_input(wildcards) -> list:
    """Paper 4.6: RetinaMapper/LayerSelector MLPs pre-trained by an all-ROI model, frozen in the recipe."""
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
    return sorted(roi_labels(table))


def per_roi(pattern: str, recipe: str, stage: str) -> list:
    return expand(pattern, recipe=recipe, stage=stage, roi=roi_ids(recipe))


def stage1_dk(wildcards) -> list:
    return per_roi("results/models/{recipe}/{stage}/roi{roi}/dk.h5", wildcards.recipe, "stage1")


def stage2_dk_source(wildcards) -> list:
    """Stage 2 distils stage-1 dark knowledge; the extra iteration (S2+1) distils stage 2's."""
    source = "stage1" if wildcards.stage2 == "stage2" else "stage2"
    return per_roi("results/models/{recipe}/{stage}/roi{roi}/dk.h5", wildcards.recipe, source)


def stage3_dk(wildcards) -> list:
    return per_roi("results/models/{recipe}/{stage}/roi{roi}/dk.h5", wildcards.recipe, LAST_STAGE2)


# -- prediction and evaluation -------------------------------------------------------------------------

# Model names of results/encoding/{name}: (recipe, stage) of per-ROI models assembled, or a single model file.
ASSEMBLED = assembled_models(config)
SINGLE = single_models(config)
EVALUATED = list(SINGLE) + list(ASSEMBLED)
FINETUNE = config["finetune"]


wildcard_constraints:
    name="|".join(EVALUATED),
    ablation="|".join(config["ablations"]) or "^$",
    base="|".join(SINGLE),
    model_dir=r"(stage0/seed\d+|ablation/[a-z0-9_]+|(afo|randroi)/(stage1|stage2|stage2plus|nodk)/roi[A-Za-z0-9_\-]+|(afo|randroi)/stage3)",


def model_files(name: str) -> list:
    """The model file(s) of an evaluated model: one, or one per ROI."""
    if name in SINGLE:
        return [SINGLE[name]]
    recipe, stage = ASSEMBLED[name]
    return per_roi("results/models/{recipe}/{stage}/roi{roi}/model.pt", recipe, stage)


def trained_models(wildcards) -> list:
    """Every model file a training job of the run writes (stage-0 seeds, ablations, every stage of every recipe)."""
    files = list(STAGE0_MODELS)
    for name in EVALUATED:
        files += [f for f in model_files(name) if f not in files]
    return files


def evaluation_models(wildcards) -> list:
    return model_files(wildcards.name)


def evaluation_predictions(wildcards) -> list:
    """The prediction file beside each model file (rule predict)."""
    return [str(Path(m).with_name("predictions.h5")) for m in model_files(wildcards.name)]


def evaluation_rois(wildcards) -> list:
    """The ROI table of a model's voxels.csv roi column (and of assembling per-ROI models)."""
    name = wildcards.name
    recipe = ASSEMBLED[name][0] if name in ASSEMBLED else ("randroi" if name == "randroi" else "afo")
    return [roi_table_path(recipe)]


def model_roi_set(wildcards) -> str:
    """Name of a model's ROI table (veroi, random, dataset): the roi_set of its per-ROI retrieval rows."""
    return Path(evaluation_rois(wildcards)[0]).stem


def predict_rois(wildcards) -> list:
    """A per-ROI model predicts its own ROI's voxels: it needs the recipe's ROI table."""
    parts = wildcards.model_dir.split("/")
    return [roi_table_path(parts[0])] if parts[-1].startswith("roi") else []


def predict_roi(wildcards):
    last = wildcards.model_dir.split("/")[-1]
    return last.removeprefix("roi") if last.startswith("roi") else None


def ood_heads_of(wildcards) -> str:
    return OOD[wildcards.holdout]


def ood_features(wildcards) -> list:
    return feature_caches([wildcards.holdout])


def ood_predictions(wildcards) -> list:
    """The holdouts' prediction files beside each model file (rule predict_ood), holdout by holdout."""
    return [str(ood_prediction_path(m, h)) for h in OOD for m in model_files(wildcards.name)]


def voxels_tables() -> list:
    return expand("results/encoding/{name}/voxels.csv", name=EVALUATED)


# -- analysis --------------------------------------------------------------------------------------------

PROBING = config["probing"]
EXTRACTORS = sorted(PROBING["extractors"]) if PROBING["enabled"] else []
# Keys of an extractor spec that its source reads (the rest would only make jobs rerun for nothing).
_SPEC_KEYS = {
    "timm": ("name", "layers", "resolution", "pretrained", "pretrained_path", "model_kwargs"),
    "backbone": (),
    "model": ("model",),
}


wildcard_constraints:
    extractor="|".join(EXTRACTORS) or "^$",


def probe_spec(wildcards) -> dict:
    spec = PROBING["extractors"][wildcards.extractor]
    return {"source": spec["source"], **{k: spec.get(k) for k in _SPEC_KEYS[spec["source"]]}}


def probe_settings() -> dict:
    return {k: PROBING[k] for k in ("n_components", "alphas", "cv", "pool_grid", "backend", "seed")}


def probe_uses_backbone(wildcards) -> bool:
    return PROBING["extractors"][wildcards.extractor]["source"] in ("backbone", "model")


def probe_features(wildcards) -> list:
    return feature_caches([wildcards.dataset]) if probe_uses_backbone(wildcards) else []


def probe_backbone(wildcards) -> dict:
    """The workflow backbone a backbone/model extractor runs itself when nothing is cached ({} otherwise)."""
    return online_backbone() if probe_uses_backbone(wildcards) else {}


def probe_model(wildcards) -> list:
    spec = PROBING["extractors"][wildcards.extractor]
    return [SINGLE[spec["model"]]] if spec["source"] == "model" else []


def probe_tables() -> list:
    return expand("results/probing/{extractor}/{dataset}.csv", extractor=EXTRACTORS, dataset=PROBED)


def prf_roots() -> dict:
    """NSD root of each dataset with pRF maps (a param: another download reruns the comparison)."""
    return {n: str(DATASETS[n]["root"]) for n in PRF_DATASETS}


def ground_truth_input() -> list:
    return ["resources/synthetic"] if SYNTHETIC else []


def viewer_surfaces() -> dict:
    """dataset -> {lh, rh} fsaverage surface files of its adapter (viewer meshes), for the datasets that have them."""
    from afo.figures.viewer import fsaverage_surface_files

    found = {n: fsaverage_surface_files(d, dataset_root(d)) for n, d in sorted(DATASETS.items())}
    return {n: {h: str(p) for h, p in files.items()} for n, files in found.items() if files}


def analysis_targets() -> list:
    out = [
        "results/headline.html",
        "results/data/overlap.csv",
        "results/data/overlap.html",
        "results/encoding/ablation_table.csv",
        "results/encoding/ablation_table.html",
        "results/encoding/comparison.csv",
        "results/encoding/comparison.html",
        "results/figures/veroi_dendrogram.png",
    ]
    out += expand("results/encoding/{name}/{table}", name=EVALUATED, table=["summary.csv", "summary.html"])
    if OOD:
        out += expand("results/encoding/{name}/{table}", name=EVALUATED, table=["ood.csv", "ood.html"])
    if EXTRACTORS:
        out += ["results/probing/probe.csv", "results/probing/probe_summary.html", "results/probing/probe_violins.png"]
    for name in config["decoding"]["models"]:
        out += [
            f"results/decoding/{name}/retrieval.csv",
            f"results/decoding/{name}/retrievals",
            f"results/figures/{name}/roi_scores",
        ]
    for name in config["evaluation"]["figure_models"]:
        out += [f"results/figures/{name}/{kind}" for kind in ("retinamap", "layerselector", "brainmaps")]
        out.append(f"results/brainmaps/{name}")
        out.append(f"results/viewer/{name}")
        if PRF_DATASETS:
            out += [f"results/analysis/prf/{name}.csv", f"results/figures/{name}/prf"]
    if SYNTHETIC:
        out += ["results/analysis/synthetic_checks.json", "results/analysis/synthetic_checks.html"]
    if FINETUNE["enabled"]:
        out.append(f"results/models/finetune/{FINETUNE['model']}/model.pt")
    return out


def dataset_role(wildcards) -> str:
    return DATASETS[wildcards.dataset]["role"]


def headline_retrieval() -> list:
    return ["results/decoding/afo/retrieval.csv"] if "afo" in config["decoding"]["models"] else []


def headline_probe() -> list:
    return ["results/probing/probe.csv"] if EXTRACTORS else []


def headline_checks() -> list:
    return ["results/analysis/synthetic_checks.json"] if SYNTHETIC else []


def headline_summary() -> list:
    return ["results/encoding/afo/summary.csv"] if "afo" in EVALUATED else []
