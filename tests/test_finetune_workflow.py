"""The workflow's finetune rule: planned only when `finetune.enabled`, on holdout datasets of a single model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = yaml.safe_load((ROOT / ".test/tiny.yaml").read_text())


def _plan(tmp_path: Path, **sections) -> subprocess.CompletedProcess:
    from conftest import write_folder_dataset

    holdout = tmp_path / "holdout"
    if not holdout.exists():
        write_folder_dataset(holdout, n_images=30, n_voxels=6, subjects=("subjA",), n_val=5)
    config = {
        **TINY,
        "datasets": {**TINY["datasets"], "lab": {"format": "folder", "root": str(holdout), "role": "holdout"}},
        **sections,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "-n",
        "--quiet",
        "rules",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow  # a multi-process or workflow run: make test, not make test-fast
def test_finetune_rule_follows_the_config(tmp_path):
    off = _plan(tmp_path)
    assert off.returncode == 0, off.stderr
    assert not any(line.split()[:1] == ["finetune"] for line in off.stdout.splitlines())  # off by default
    plan = _plan(tmp_path, finetune={"enabled": True, "model": "afo", "datasets": ["lab"], "train": {"max_epochs": 3}})
    assert plan.returncode == 0, plan.stderr
    assert any(line.split()[:2] == ["finetune", "1"] for line in plan.stdout.splitlines()), plan.stdout
    bad = _plan(tmp_path, finetune={"enabled": True, "datasets": ["synth_fmri"]})
    assert bad.returncode != 0 and "role holdout" in bad.stdout + bad.stderr
    bad = _plan(tmp_path, finetune={"enabled": True, "model": "stage1", "datasets": ["lab"]})
    assert bad.returncode != 0 and "single models" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_finetune_rule_runs_and_writes_a_model_file_afo_load_takes(tmp_path):
    """The cheapest base (naivemix: one stage-0 model) on the tiny config, fitted on a holdout folder dataset."""
    import numpy as np

    import afo

    sections = {
        "finetune": {"enabled": True, "model": "naivemix", "datasets": ["lab"], "train": {"max_epochs": 2}},
        "compute": {**TINY["compute"], "device": "cpu"},
    }
    assert _plan(tmp_path, **sections).returncode == 0
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "AFO_GPU_CLAIM": "never"}
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "2",
        "results/models/finetune/naivemix/model.pt",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = afo.load(tmp_path / "results/models/finetune/naivemix/model.pt", device="cpu")
    assert "lab/subjA" in m.subjects and "synth_fmri/subj01" in m.subjects
    images = sorted((tmp_path / "holdout" / "images").glob("*.png"))[:3]
    assert np.isfinite(m.predict(images, subject="lab/subjA")).all()
    assert (tmp_path / "logs/train/finetune_naivemix.log").is_file()
