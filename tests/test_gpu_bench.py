"""The GPU benchmark (benchmarks/gpu.sh) cannot rot: it runs end to end at toy sizes on the CPU, in an environment
that has only what the GPU machine has, and its committed job list is up to date."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Installed here but not on the GPU machine (only torch, timm, torchvision, lightning, h5py, numpy, pandas, scipy,
# scikit-learn, pyyaml and their own dependencies are): importing any of them there fails, so it must here too.
ABSENT = (
    "snakemake",
    "nibabel",
    "mne",
    "adabelief_pytorch",
    "tabulate",
    "colorama",
    "jsonschema",
    "himalaya",
    "matplotlib",
    "tables",
    "av",
    "tensorboard",
    "tensorboardX",
    "pytorch_lightning",
    "lightning_fabric",
)

# A sitecustomize.py makes the absent packages invisible in every Python the benchmark starts, as if not installed:
# the path finder searches only outside site-packages for them (so the shipped wheels still import), and their
# distribution metadata is hidden (Lightning's helpers ask importlib.metadata and find_spec whether a package is
# there, and import it when told yes).
SITECUSTOMIZE = f"""
import importlib.machinery, sys, sysconfig
_ABSENT = {ABSENT!r}
_ABSENT_DISTS = {{n.lower().replace("-", "_") for n in _ABSENT}} | {{"tensorboardx"}}
_SITE = {{sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}}
_PathFinder = importlib.machinery.PathFinder

class _GpuMachinePathFinder(_PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if path is None and name.split(".")[0] in _ABSENT:
            path = [p for p in sys.path if p not in _SITE]
        return _PathFinder.find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        for dist in _PathFinder.find_distributions(*args, **kwargs):
            if (dist.metadata["Name"] or "").lower().replace("-", "_") not in _ABSENT_DISTS:
                yield dist

sys.meta_path[sys.meta_path.index(_PathFinder)] = _GpuMachinePathFinder
"""


@pytest.mark.slow  # about 2 minutes on 2 cores
def test_gpu_sh_tiny_runs_with_only_the_gpu_machines_packages(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(site),
        "OUT_DIR": str(tmp_path / "out"),
        "CUDA_VISIBLE_DEVICES": "",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu.sh"), "--tiny"], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The environment really lacked them: AdaBelief came from the shipped wheels, Lightning as `lightning`.
    assert "from benchmarks/wheels: adabelief_pytorch, tabulate, colorama" in proc.stdout
    readout = (tmp_path / "out/readout.txt").read_text()
    assert "efficient (chunk=" in readout and "SCALED DOWN" in readout
    results = json.loads((tmp_path / "out/gpu_bench.json").read_text())
    runs = {(r["cache"], r["precision"]): r for r in results["runs"]}
    assert set(runs) == {(c, p) for c in ("disk", "none") for p in ("bf16-mixed", "32-true")}
    for r in runs.values():
        assert "error" not in r and r["steps_timed"] == 2 and r["images_per_s"] > 0 and 0 <= r["data_wait_share"] <= 1
    proj = results["projection"]["cache_disk/32-true"]
    jobs = json.loads((ROOT / "benchmarks/results/jobs_paper.json").read_text())
    assert proj["train_steps"] == sum(
        r["jobs"] * r["steps_per_job"] for r in jobs["rules"].values() if r["kind"] == "train"
    )
    assert proj["total_hours"] > 0 and proj["paper_gpu_hours"] == 300
    assert results["projection"]["cache_none/32-true"]["hours"]["features"] == 0


def test_committed_job_list_matches_the_paper_config(tmp_path):
    out = tmp_path / "jobs.json"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/jobs_paper.py"), "--out", str(out)],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    fresh, committed = (
        json.loads(out.read_text()),
        json.loads((ROOT / "benchmarks/results/jobs_paper.json").read_text()),
    )
    assert fresh == committed, (
        "benchmarks/results/jobs_paper.json is stale: rerun python benchmarks/jobs_paper.py and commit it"
    )
    paper = committed["rules"]
    # The paper recipe: 10 stage-0 seeds, 5 ablations, 17 veROIs x (stage 1 and 2 of afo and randROI, noDK), 2 stage 3.
    assert sum(r["jobs"] for r in paper.values() if r["kind"] == "train") == 10 + 5 + 17 * 5 + 2
