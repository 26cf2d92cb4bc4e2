"""benchmarks/recipe.py's report: Tables 2 and 3 and the paired tests from finished runs of several seeds.

The runs are written here in the layout the workflow leaves (config.yaml, the simulator's ground_truth.csv,
results/encoding/<model>/voxels.csv), with per-voxel r chosen so that every number of the report is known.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("recipe_benchmark", ROOT / "benchmarks" / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


AREAS = ["V1", "V1", "LO", "LO"]
# model -> per-voxel test r of seed s: base + s * 0.01 (so the sd over seeds 0, 1 is 0.00707)
BASE = {
    "naivemix": [0.5, 0.6, 0.1, 0.2],
    "stage1": [0.4, 0.5, 0.2, 0.3],
    "stage2": [0.5, 0.6, 0.3, 0.4],
    "afo": [0.6, 0.7, 0.3, 0.4],
    "frozenrm": [0.1, 0.1, 0.1, 0.1],
}


def write_run(work: Path, seed: int, models: dict[str, list[float]]) -> None:
    config = {
        "datasets": {"nsd": {"format": "synthetic", "part": "nsd", "role": "train"}},
        "evaluation": {"area_groups": {"V1": "early", "LO": "late"}},
    }
    work.mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    truth = work / "resources/synthetic/nsd/subj01/ground_truth.csv"
    truth.parent.mkdir(parents=True)
    pd.DataFrame({"voxel": range(4), "area": AREAS}).to_csv(truth, index=False)
    for model, r in models.items():
        out = work / "results/encoding" / model / "voxels.csv"
        out.parent.mkdir(parents=True)
        pd.DataFrame(
            {"dataset": "nsd", "subject": "subj01", "voxel": range(4), "r_test": np.asarray(r) + seed * 0.01}
        ).to_csv(out, index=False)


def test_report_tables_cells_and_paired_tests(recipe, tmp_path, capsys):
    for seed in (0, 1):
        write_run(tmp_path / f"seed{seed}", seed, BASE)
        # The S2+1 variant: its stage2 is S2+1, its afo is S3 distilled from it.
        write_run(tmp_path / "s2plus" / f"seed{seed}", seed, {"stage2": [0.7, 0.8, 0.5, 0.6], "afo": [0.9] * 4})
    recipe.main(["report", "--out", str(tmp_path), "--csv"])
    text = capsys.readouterr().out
    assert "| afo (S3) | 0.505 ± 0.007 (n=2) |" in text  # mean of [0.6, 0.7, 0.3, 0.4] = 0.5, seeds +0 / +0.01
    assert "| S2+1 | 0.655 ± 0.007 (n=2) |" in text
    assert "| S3 after S2+1 | 0.905 ± 0.007 (n=2) |" in text
    assert "| FrozenRM | 0.105 ± 0.007 (n=2) |" in text
    assert "NoDK" not in text  # rows without runs are left out, not shown empty
    cells = pd.read_csv(tmp_path / "cells.csv")
    late = cells[(cells.model == "stage1") & (cells.group == "late") & (cells.seed == 0)]["r"]
    assert late.item() == pytest.approx(0.25)
    tests = pd.read_csv(tmp_path / "tests.csv").set_index(["a", "b"])
    # afo - naivemix per voxel: +0.1, +0.1, +0.2, +0.2 on both seeds
    assert tests.loc[("afo", "naivemix"), "mean_diff"] == pytest.approx(0.15)
    assert tests.loc[("afo", "naivemix"), "frac_a_better"] == 1.0
    assert tests.loc[("afo", "naivemix"), "seeds_a_better"] == "2/2"
    # All 8 pairs (2 seeds x 4 voxels) favour afo: the exact two-sided signed-rank p is 2 / 2^8 (one-sided, seed
    # means or unpaired samples would give another number).
    assert tests.loc[("afo", "naivemix"), "p_wilcoxon"] == pytest.approx(2 / 2**8)
    assert tests.loc[("stage2plus", "stage2"), "mean_diff"] == pytest.approx(0.2)
    assert tests.loc[("stage2", "stage1"), "n_voxels"] == 8
