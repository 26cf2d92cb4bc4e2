"""The Snakemake workflow's plans: the shipped configs' job counts, DAG shape, lint, rerun triggers of inputs, and
the resources each rule asks for (dry runs and small runs, seconds each)."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
import yaml
from fixtures.workflow import ROOT, TINY, planned_jobs, snakemake, write_config


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
    assert (
        jobs["prepare"] == 2 and jobs["train_stage0"] == 2 and jobs["train_stage1"] == 4 and jobs["train_stage3"] == 1
    )
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
    assert jobs["train_stage0"] == TINY["afo"]["stage0_seeds"] and jobs["veroi"] == 1 and jobs["random_rois"] == 1
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
    assert (
        jobs["train_stage0"] >= 1 and jobs["dark_knowledge"] >= 1 and jobs["predict"] >= 1 and jobs["train_stage3"] == 1
    )


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


@pytest.mark.slow  # a multi-process or workflow run: make test, not make test-fast
def test_editing_a_folder_dataset_reruns_prepare(tmp_path):
    from conftest import write_folder_dataset

    root = write_folder_dataset(tmp_path / "mine", n_images=12, n_voxels=4, subjects=("subjA",))
    responses = root / "subjA" / "responses.npy"
    before, after = _prepare_then_edit(
        tmp_path, {"format": "folder", "root": str(root)}, lambda: np.save(responses, np.load(responses) * 2)
    )
    assert before == {} and after == {"prepare": 1}


@pytest.mark.slow  # a multi-process or workflow run: make test, not make test-fast
def test_editing_a_public_dataset_reruns_prepare(tmp_path):
    """A public dataset (NSD layout here) is tracked by its manifest of paths, sizes and mtimes."""
    from fixtures.formats import write_nsd

    root = tmp_path / "NSD"
    write_nsd(root, formats=("hdf5",))
    expdesign = next(root.rglob("nsd_expdesign.mat"))
    before, after = _prepare_then_edit(
        tmp_path, {"format": "nsd", "root": str(root)}, lambda: os.utime(expdesign, ns=(1, 1))
    )
    assert before == {} and after == {"prepare": 1}


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
    config = {
        **TINY,
        "compute": {**TINY.get("compute", {}), "train_devices": 2, "train_threads": 3, "train_mem_mb": 1000},
    }
    write_config(tmp_path, config)
    out = snakemake(tmp_path, "-n", "--forceall", "--cores", "16").stdout  # 2 cores would cap the threads
    jobs = re.split(r"\n(?=(?:rule|localrule) )", out)
    train = [j for j in jobs if re.match(r"(?:local)?rule train_", j)]
    assert train and all(
        re.search(r"threads: 6\b", j) and re.search(r"\bgpu=2\b", j) and "mem_mb=2000" in j for j in train
    )
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
