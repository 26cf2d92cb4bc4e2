"""The Snakemake workflow: plans of the shipped configs, DAG shape, lint, and a tiny end-to-end run with exact reruns.

Tiers: the dry-run tests take seconds; the `workflow` tests share one run of .test/tiny.yaml (about two minutes on
2 cores) and belong to `make test-fast`; the larger runs elsewhere are marked `slow`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TESTS = ROOT / ".test"


def load_test_config(name: str) -> dict:
    """A config of .test/ (YAML a person can run with `snakemake --configfile .test/<name>.yaml`)."""
    return yaml.safe_load((TESTS / f"{name}.yaml").read_text())


TINY = load_test_config("tiny")


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["AFO_GPU_CLAIM"] = "never"
    return env


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def write_config(workdir: Path, config: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Job counts per rule from a dry run ({} when nothing is to be done)."""
    out = snakemake(workdir, "-n", *args, "--quiet", "rules").stdout
    counts = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_default_config_dry_run(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    jobs = planned_jobs(tmp_path)
    # synth_fmri, synth_eeg and the holdout synth_holdout (probing only: no model trains on it)
    assert jobs["simulate"] == 1 and jobs["prepare"] == 3 and jobs["features"] == 3 and jobs["overlap"] == 1
    assert jobs["probe"] == 3 * len(yaml.safe_load((ROOT / "config.yaml").read_text())["probing"]["extractors"])


def test_paper_config_plans_exactly_its_own_datasets(tmp_path):
    """--configfile is the whole configuration: the demo's config.yaml in the same folder adds nothing."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    jobs = planned_jobs(tmp_path, "--configfile", str(ROOT / "config/paper.yaml"))
    afo = paper["afo"]
    k = afo["veroi"]["n_rois"]
    n_ablations = len(paper["ablations"])
    n_extractors = len(paper["probing"]["extractors"])
    assert jobs["prepare"] == 7 and jobs["features"] == 7
    assert jobs["overlap"] == 1  # images shared between the 7 datasets, after prepare
    assert "simulate" not in jobs and "synthetic_checks" not in jobs
    assert jobs["train_stage0"] == afo["stage0_seeds"] and jobs["train_ablation"] == n_ablations
    assert jobs["veroi"] == 1 and jobs["random_rois"] == 1
    # afo and randroi recipes: stage 1 and stage 2 per ROI; noDK per ROI for afo only; one stage 3 each.
    assert jobs["train_stage1"] == 2 * k and jobs["train_stage2"] == 2 * k and jobs["train_nodk"] == k
    assert jobs["train_stage3"] == 2
    assert jobs["dark_knowledge"] == 2 * 2 * k  # stage-1 and stage-2 dumps of both recipes
    # afo, naivemix, randroi, the ablations; stage1, stage2, nodk, randroi_stage1, randroi_stage2 (assembled)
    n_evaluated = 3 + n_ablations + 5
    assert jobs["evaluate"] == n_evaluated and jobs["summary_html"] == n_evaluated
    # one prediction file per model file: the single models, and every per-ROI model (stage1, stage2, nodk x2 recipes)
    assert jobs["predict"] == 3 + n_ablations + 2 * k + 2 * k + k
    assert jobs["probe"] == 7 * n_extractors
    assert jobs["decode"] == len(paper["decoding"]["models"])


def test_pilot_config_plans_the_paper_pipeline_on_a_slice(tmp_path):
    jobs = planned_jobs(tmp_path, "--configfile", str(ROOT / "config/pilot.yaml"))
    assert jobs["prepare"] == 2 and jobs["train_stage0"] == 2 and jobs["train_stage1"] == 4 and jobs["train_stage3"] == 1
    assert jobs["overlap"] == 1
    assert "simulate" not in jobs and "train_ablation" not in jobs


@pytest.mark.parametrize("k", [2, 4])
def test_dag_shape_for_k_rois(tmp_path, k):
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["afo"]["veroi"]["n_rois"] = k
    config["afo"]["baselines"] = {"naivemix": True, "nodk": True, "randroi": True}
    config["afo"]["s2_plus_one"] = True
    write_config(tmp_path, config)
    jobs = planned_jobs(tmp_path)
    assert jobs["train_stage0"] == 2 and jobs["veroi"] == 1 and jobs["random_rois"] == 1
    # afo and randroi recipes: stage 1, stage 2 and S2+1 per ROI; noDK per ROI for afo only.
    assert jobs["train_stage1"] == 2 * k
    assert jobs["train_stage2"] == 2 * 2 * k
    assert jobs["train_nodk"] == k
    assert jobs["dark_knowledge"] == 2 * 3 * k  # stage1, stage2 and stage2plus dumps, both recipes
    assert jobs["train_stage3"] == 2
    # afo, naivemix, randroi + stage1, stage2, stage2_once, nodk, randroi_stage1, randroi_stage2
    assert jobs["evaluate"] == 9


def test_backbone_cache_none_plans_no_features_job(tmp_path):
    """backbone.cache none: training, prediction, dark knowledge and probing run the backbone; nothing is cached."""
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["backbone"]["cache"] = "none"
    write_config(tmp_path, config)
    jobs = planned_jobs(tmp_path)
    assert "features" not in jobs
    assert jobs["train_stage0"] >= 1 and jobs["dark_knowledge"] >= 1 and jobs["predict"] >= 1 and jobs["train_stage3"] == 1


def test_lint_is_clean(tmp_path):
    write_config(tmp_path, TINY)
    proc = snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unknown_model_name_fails_before_anything_runs(tmp_path):
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["decoding"]["models"] = ["nope"]
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "decoding.models" in proc.stdout + proc.stderr


def _prepare_then_edit(tmp_path, dataset: dict, edit) -> tuple[dict, dict]:
    """Prepare one dataset through the workflow, then edit its files: (plan before the edit, plan after)."""
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["datasets"] = {"mine": {**dataset, "role": "train"}}
    write_config(tmp_path / "run", config)
    target = "results/prepared/mine.h5"
    snakemake(tmp_path / "run", target)
    before = planned_jobs(tmp_path / "run", target)
    edit()
    return before, planned_jobs(tmp_path / "run", target)


def test_editing_a_folder_dataset_reruns_prepare(tmp_path):
    from conftest import write_folder_dataset

    root = write_folder_dataset(tmp_path / "mine", n_images=12, n_voxels=4, subjects=("subjA",))
    responses = root / "subjA" / "responses.npy"
    before, after = _prepare_then_edit(tmp_path, {"format": "folder", "root": str(root)},
                                       lambda: np.save(responses, np.load(responses) * 2))
    assert before == {} and after == {"prepare": 1}


def test_editing_a_public_dataset_reruns_prepare(tmp_path):
    """A public dataset (NSD layout here) is tracked by its manifest of paths, sizes and mtimes."""
    from fixtures.formats import write_nsd

    root = tmp_path / "NSD"
    write_nsd(root, formats=("hdf5",))
    expdesign = next(root.rglob("nsd_expdesign.mat"))
    before, after = _prepare_then_edit(tmp_path, {"format": "nsd", "root": str(root)},
                                       lambda: os.utime(expdesign, ns=(1, 1)))
    assert before == {} and after == {"prepare": 1}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The whole recipe on .test/tiny.yaml, run once for the tests below."""
    workdir = tmp_path_factory.mktemp("e2e")
    write_config(workdir, TINY)
    snakemake(workdir)
    return workdir


@pytest.mark.workflow
def test_end_to_end_outputs(finished_run):
    voxels = pd.read_csv(finished_run / "results/encoding/afo/voxels.csv")
    contract = ["dataset", "subject", "voxel", "roi", "x", "y", "z", "u_x", "u_y", "layer", "eta_0", "eta_1",
                "r_val", "r_test", "nc", "r_test_norm"]
    assert list(voxels.columns[: len(contract)]) == contract
    assert set(voxels["dataset"]) == {"synth_fmri", "synth_eeg"}
    assert voxels["r_test"].notna().mean() > 0.95 and voxels["u_x"].between(-1, 1).all()
    summary = pd.read_csv(finished_run / "results/encoding/afo/summary.csv")
    assert {"n_voxels", "mean_r_test", "median_r_test_norm", "n_test_images", "n_test_left_out"} <= set(summary.columns)
    overlap = pd.read_csv(finished_run / "results/data/overlap.csv")
    assert list(overlap.columns[:4]) == ["dataset_a", "image_a", "name_a", "split_a"]
    comparison = pd.read_csv(finished_run / "results/encoding/comparison.csv")
    assert {"afo", "naivemix", "stage1", "stage2"} <= set(comparison.columns)
    assert "V1" in set(comparison["area"])
    # comparison.csv is the ablation table's view: its pooled mean_r rows, not a second computation.
    ablation = pd.read_csv(finished_run / "results/encoding/ablation_table.csv", dtype={"roi": str, "subject": str})
    pooled = ablation[(ablation["subject"] == "all") & (ablation["metric"] == "mean_r") & (ablation["roi"] == "all")]
    for dataset, row in pooled.set_index("dataset").iterrows():
        mine = comparison[(comparison["dataset"] == dataset) & (comparison["area"] == "all")].iloc[0]
        assert mine["afo"] == pytest.approx(row["afo"], abs=1e-4)


@pytest.mark.workflow
def test_logs_hold_each_jobs_output(finished_run):
    train_log = (finished_run / "logs/train/afo_stage3.log").read_text()
    assert "job train_stage3" in train_log and "done in" in train_log
    assert "mean_r_test" in (finished_run / "logs/evaluate/afo.log").read_text()


@pytest.mark.workflow
def test_second_call_runs_nothing(finished_run):
    assert planned_jobs(finished_run) == {}


def _planned_after(workdir: Path, change) -> dict[str, int]:
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    original = (workdir / "config.yaml").read_text()
    change(config)
    try:
        write_config(workdir, config)
        return planned_jobs(workdir)
    finally:
        (workdir / "config.yaml").write_text(original)


ANALYSIS_OF_AFO = {"evaluate", "summary_html", "ablation_table", "comparison_html", "decode", "model_figures",
                   "roi_scores", "synthetic_checks", "headline", "all"}


@pytest.mark.workflow
@pytest.mark.parametrize(
    "change, expected",
    [
        # A stage-3 setting reruns stage 3, its prediction file and what reads them.
        (lambda c: c["afo"].setdefault("stages", {}).update(stage3={"lr": 0.02}), {"train_stage3", "predict"} | ANALYSIS_OF_AFO),
        # How jobs use the machine changes no result: nothing reruns.
        (lambda c: c["compute"].update(train_threads=2, feature_batch_size=7, device="cpu", readout_chunk=5, num_workers=1,
                                        train_devices=2), set()),
        # The permutation null's seed reruns only the synthetic checks.
        (lambda c: c["evaluation"].update(null_seed=3), {"synthetic_checks", "headline", "all"}),
        # The randROI seed: the tiny config has no randROI baseline, so nothing reads it.
        (lambda c: c["afo"].update(randroi_seed=3), set()),
    ],
    ids=["stage3_lr", "compute", "null_seed", "randroi_seed"],
)
def test_rerun_scope(finished_run, change, expected):
    jobs = _planned_after(finished_run, change)
    assert set(jobs) == expected
    if "evaluate" in expected:
        assert jobs["evaluate"] == 1 and jobs["train_stage3"] == 1 and jobs["predict"] == 1


@pytest.mark.workflow
def test_rerun_scope_of_veroi_seed_roi_count_and_backbone(finished_run):
    jobs = _planned_after(finished_run, lambda c: c["afo"]["veroi"].update(seed=5))
    assert "train_stage0" not in jobs and jobs["veroi"] == 1 and jobs["train_stage1"] == 2
    jobs = _planned_after(finished_run, lambda c: c["afo"]["veroi"].update(n_rois=3))
    assert "train_stage0" not in jobs and jobs["veroi"] == 1 and jobs["train_stage1"] == 3
    jobs = _planned_after(finished_run, lambda c: c["backbone"].update(layers=[0]))
    assert jobs["features"] == 2 and "prepare" not in jobs and "simulate" not in jobs


def _gpu_rules_of_the_workflow() -> set[str]:
    """Rules that declare gpu resources, `use rule ... as X with:` inheriting them, read from workflow/rules/*.smk."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "workflow/rules").glob("*.smk")))
    blocks = re.split(r"\n(?=(?:rule|checkpoint|use rule) )", text)
    gpu, parent = set(), {}
    for block in blocks:
        head = block.splitlines()[0]
        if m := re.match(r"(?:rule|checkpoint) (\w+):", head):
            if re.search(r"^\s+gpu=(\d*[1-9]|TRAIN_DEVICES)", block, re.M):  # training: compute.train_devices
                gpu.add(m.group(1))
        elif m := re.match(r"use rule (\w+) as (\w+) with:", head):
            parent[m.group(2)] = m.group(1)
    for child, base in parent.items():
        while base in parent:
            base = parent[base]
        if base in gpu:
            gpu.add(child)
    return gpu


def test_multi_device_training_jobs_ask_for_n_gpus_threads_and_memory(tmp_path):
    """compute.train_devices: N: every training job declares gpu=N, N x train_threads, N x train_mem_mb; others not."""
    config = {**TINY, "compute": {**TINY.get("compute", {}), "train_devices": 2, "train_threads": 3, "train_mem_mb": 1000}}
    write_config(tmp_path, config)
    out = snakemake(tmp_path, "-n", "--forceall", "--cores", "16").stdout  # 2 cores would cap the threads
    jobs = re.split(r"\n(?=(?:rule|localrule) )", out)
    train = [j for j in jobs if re.match(r"(?:local)?rule train_", j)]
    assert train and all(re.search(r"threads: 6\b", j) and re.search(r"\bgpu=2\b", j) and "mem_mb=2000" in j for j in train)
    others = [j for j in jobs if re.match(r"(?:local)?rule (features|predict|dark_knowledge)\b", j)]
    assert others and all(re.search(r"\bgpu=1\b", j) for j in others)


def test_slurm_profile_keeps_each_training_job_on_one_node():
    """A multi-GPU training job's ranks are processes of one job: its GPUs must be on one node."""
    from yte import process_yaml

    with open(ROOT / "workflow/profiles/slurm/config.yaml") as f:
        profile = process_yaml(f)
    resources = profile["set-resources"]
    trains = [r for r in resources if r.startswith("train_")]
    assert set(trains) == {r for r in _gpu_rules_of_the_workflow() if r.startswith("train_")}
    assert all(resources[r]["nodes"] == 1 for r in trains)
    assert all("nodes" not in v for r, v in resources.items() if not r.startswith("train_"))


def test_slurm_profile_sends_exactly_the_gpu_rules_to_the_gpu_partition():
    profile = (ROOT / "workflow/profiles/slurm/config.yaml").read_text()
    listed = set(re.findall(r'"(\w+)": \d+', profile.split("GPU_RULES = {", 1)[1].split("}", 1)[0]))
    assert listed == _gpu_rules_of_the_workflow()
    assert {"train_stage1", "predict", "features", "probe"} <= listed and "decode" not in listed
