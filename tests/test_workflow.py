"""The Snakemake workflow end to end: one run of .test/tiny.yaml (about two minutes on 2 cores) and its exact reruns.

These `workflow` tests share the run and belong to `make test-fast`; the plans of the shipped configs are in
test_workflow_plan.py; the larger runs elsewhere are marked `slow`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from fixtures.workflow import TINY, planned_jobs, snakemake, write_config


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
    contract = [
        "dataset",
        "subject",
        "voxel",
        "roi",
        "x",
        "y",
        "z",
        "u_x",
        "u_y",
        "layer",
        "eta_0",
        "eta_1",
        "r_val",
        "r_test",
        "nc",
        "r_test_norm",
    ]
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
def test_stage0_learns(finished_run):
    """One number of the run that means something: stage 0 (the naivemix model; tiny.yaml lets it train up to 40
    epochs, the other stages 2) predicts the fMRI subjects' test images at a mean r of about 0.13 (about 0 after
    2 epochs); the threshold is half of that."""
    voxels = pd.read_csv(finished_run / "results/encoding/naivemix/voxels.csv")
    mean_r = voxels.loc[voxels["dataset"] == "synth_fmri", "r_test"].mean()
    assert mean_r > 0.07, f"naivemix mean test r on synth_fmri {mean_r:.3f}"


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


ANALYSIS_OF_AFO = {
    "evaluate",
    "summary_html",
    "ablation_table",
    "comparison_html",
    "decode",
    "model_figures",
    "viewer",
    "roi_scores",
    "synthetic_checks",
    "headline",
    "all",
}


@pytest.mark.workflow
@pytest.mark.parametrize(
    "change, expected",
    [
        # A stage-3 setting reruns stage 3, its prediction file and what reads them (the training summary too).
        (
            lambda c: c["afo"].setdefault("stages", {}).update(stage3={"lr": 0.02}),
            {"train_stage3", "predict", "training_summary"} | ANALYSIS_OF_AFO,
        ),
        # How jobs use the machine changes no result: nothing reruns.
        (
            lambda c: c["compute"].update(
                train_threads=2, feature_batch_size=7, device="cpu", readout_chunk=5, num_workers=1, train_devices=2
            ),
            set(),
        ),
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
