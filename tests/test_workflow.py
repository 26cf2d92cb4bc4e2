"""The Snakemake workflow: DAG shape, an end-to-end run on a tiny config, exact reruns, lint."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "simulate": {"seed": 0, "options": {"n_images": 100, "n_test_images": 16, "n_fmri_subjects": 2, "image_size": 32, "eeg_n_times": 4}},
    "datasets": {
        "synth_fmri": {"format": "synthetic", "part": "fmri", "role": "train"},
        "synth_eeg": {"format": "synthetic", "part": "eeg", "role": "train"},
    },
    "prepare": {"image_size": 32},
    "backbone": {
        "name": "vit_tiny_patch16_224", "layers": [0, 1], "resolution": 32,
        "model_kwargs": {"patch_size": 8, "embed_dim": 24, "depth": 2, "num_heads": 2}, "batch_size": 64,
    },
    "model": {"conv_width": 8, "out_dim": 8, "n_convs": 2, "kernel_size": 3, "pe_frequencies": 4, "mlp_width": 16},
    "train": {"batch_size": 16, "max_voxels": 200, "epoch_fraction": 0.5, "max_epochs": 2, "patience": 5, "top_k": 2, "lr": 0.01},
    "afo": {"stage0_seeds": 2, "veroi": {"n_kmeans": 16, "n_rois": 2, "threshold": None}},
    "compute": {"train_threads": 1, "train_mem_mb": 1000},
}


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
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Job counts per rule from a dry run ({} when nothing is to be done)."""
    out = snakemake(workdir, "-n", "--quiet", "rules").stdout
    counts = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_default_config_dry_run(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    jobs = planned_jobs(tmp_path)
    assert jobs["simulate"] == 1 and jobs["prepare"] == 2 and jobs["features"] == 2


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


def test_lint_is_clean(tmp_path):
    write_config(tmp_path, TINY)
    proc = snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The whole recipe on the tiny config, run once for the tests below."""
    workdir = tmp_path_factory.mktemp("e2e")
    write_config(workdir, TINY)
    snakemake(workdir)
    return workdir


@pytest.mark.slow
def test_end_to_end_outputs(finished_run):
    voxels = pd.read_csv(finished_run / "results/encoding/afo/voxels.csv")
    contract = ["dataset", "subject", "voxel", "roi", "x", "y", "z", "u_x", "u_y", "layer", "eta_0", "eta_1",
                "r_val", "r_test", "nc", "r_test_norm"]
    assert list(voxels.columns[: len(contract)]) == contract
    assert set(voxels["dataset"]) == {"synth_fmri", "synth_eeg"}
    assert voxels["r_test"].notna().mean() > 0.95 and voxels["u_x"].between(-1, 1).all()
    summary = pd.read_csv(finished_run / "results/encoding/afo/summary.csv")
    assert {"n_voxels", "mean_r_test", "median_r_test_norm"} <= set(summary.columns)
    comparison = pd.read_csv(finished_run / "results/encoding/comparison.csv")
    assert {"afo", "naivemix", "stage1", "stage2"} <= set(comparison.columns)
    assert "V1" in set(comparison["area"])


@pytest.mark.slow
def test_second_call_runs_nothing(finished_run):
    assert planned_jobs(finished_run) == {}


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda c: c["afo"].setdefault("stages", {}).update(stage3={"lr": 0.02}),
            {"train_stage3", "evaluate", "compare", "all", "decode", "probe", "probe_report", "ablation_table",
             "encoding_table_html", "comparison_html", "model_figures", "roi_scores", "synthetic_checks"},
        ),
        (lambda c: c["compute"].update(train_threads=2), set()),
    ],
)
def test_rerun_scope(finished_run, change, expected):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    change(config)
    original = (finished_run / "config.yaml").read_text()
    try:
        write_config(finished_run, config)
        jobs = planned_jobs(finished_run)
    finally:
        (finished_run / "config.yaml").write_text(original)
    assert set(jobs) == expected
    if "evaluate" in expected:
        assert jobs["evaluate"] == 1 and jobs["train_stage3"] == 1


@pytest.mark.slow
def test_rerun_scope_of_roi_count_and_backbone(finished_run):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    original = (finished_run / "config.yaml").read_text()
    try:
        config["afo"]["veroi"]["n_rois"] = 3
        write_config(finished_run, config)
        jobs = planned_jobs(finished_run)
        assert "train_stage0" not in jobs and jobs["veroi"] == 1 and jobs["train_stage1"] == 3
        config["afo"]["veroi"]["n_rois"] = 2
        config["backbone"]["layers"] = [0]
        write_config(finished_run, config)
        jobs = planned_jobs(finished_run)
        assert jobs["features"] == 2 and "prepare" not in jobs and "simulate" not in jobs
    finally:
        (finished_run / "config.yaml").write_text(original)
