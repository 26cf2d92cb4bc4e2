"""benchmarks/recipe.py: units (variant x seed) whose raw output is written once and skipped after, and the report
from those raw outputs: Tables 2 and 3, seed-level tests (t confidence intervals, paired t-tests, Holm), the
capacity sweep, and the units it refuses.

Work folders are written here in the layout the workflow leaves (config.yaml, the simulator's ground_truth.csv,
results/encoding/<model>/voxels.csv, model files with their info record), and raw outputs with per-voxel r
chosen so that every number of the report is known. No snakemake runs.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
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
GROUPS = {"V1": "early", "LO": "late"}
# model -> per-voxel test r of seed s: base + s * 0.01 (so the sd over two seeds is 0.00707)
BASE = {
    "naivemix": [0.5, 0.6, 0.1, 0.2],
    "stage1": [0.4, 0.5, 0.2, 0.3],
    "stage2": [0.5, 0.6, 0.3, 0.4],
    "afo": [0.6, 0.7, 0.3, 0.4],
    "frozenrm": [0.1, 0.1, 0.1, 0.1],
}
# The model files behind BASE's models (folders under results/models), all stopped by patience.
JOB_DIRS = ["stage0/seed0", "afo/stage1/roi0", "afo/stage2/roi0", "afo/stage3", "ablation/frozenrm"]


def write_model(path: Path, stop_reason: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"stop_reason": stop_reason, "epochs": 12, "best_epoch": 8, "steps": 228, "val_r": 0.5, "seconds": 40.0}
    torch.save({"info": info}, path)


def write_run(
    work: Path, seed: int, models: dict[str, list[float]], capped: tuple[str, ...] = (), val: dict | None = None
) -> None:
    config = {
        "datasets": {"nsd": {"format": "synthetic", "part": "nsd", "role": "train"}},
        "evaluation": {"area_groups": GROUPS},
        "model": {"conv_width": 48, "out_dim": 32},
        "train": {"max_epochs": 100, "patience": 4, "lr": 0.01, "dk_weight": 0.2},
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    truth = work / "resources/synthetic/nsd/subj01/ground_truth.csv"
    truth.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"voxel": range(4), "area": AREAS}).to_csv(truth, index=False)
    for model, r in models.items():
        out = work / "results/encoding" / model / "voxels.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        r_test = np.asarray(r) + seed * 0.01
        voxels = {"dataset": "nsd", "subject": "subj01", "voxel": range(4), "roi": [0, 0, 1, 1], "r_test": r_test}
        if val is not None:
            voxels["r_val"] = val[model]
        pd.DataFrame(voxels).to_csv(out, index=False)
    for rel in JOB_DIRS:
        write_model(work / "results/models" / rel / "model.pt", "max_epochs" if rel in capped else "patience")


def write_unit(results: Path, variant: str, seed: int, rows: dict[str, list[float]], stop: str = "patience",
               width: int = 48, role: str = "report") -> None:  # fmt: skip
    """A raw output as `run` leaves it: voxels.csv (per-voxel r as given), training.csv, unit.json."""
    dest = results / variant / f"seed{seed}"
    dest.mkdir(parents=True)
    frames = [
        pd.DataFrame(
            {
                "model": m,
                "dataset": "nsd",
                "subject": "subj01",
                "voxel": range(4),
                "roi": [0, 0, 1, 1],
                "area": AREAS,
                "group": [GROUPS[a] for a in AREAS],
                "r_test": r,
            }
        )  # fmt: skip
        for m, r in rows.items()
    ]
    pd.concat(frames).to_csv(dest / "voxels.csv", index=False)
    jobs = pd.DataFrame({"model": ["stage0/seed0", "afo/stage3"], "stop_reason": ["patience", stop]})
    jobs.to_csv(dest / "training.csv", index=False)
    unit = {"variant": variant, "seed": seed, "models": sorted(rows), "conv_width": width, "role": role}
    (dest / "unit.json").write_text(json.dumps(unit))


# afo - naivemix of the five report seeds (every voxel moves by the same amount, so the group means do too)
DIFFS = [0.01, 0.03, 0.02, 0.04, 0.0]


def test_mean_ci_and_t_test_known_numbers(recipe):
    out = recipe.mean_ci(np.array(DIFFS))
    # mean 0.02, sd (ddof=1) sqrt(0.001 / 4) = 0.0158114, se 0.0070711, t(0.975, 4) = 2.7764451
    assert out["n_seeds"] == 5
    assert out["mean"] == pytest.approx(0.02)
    assert out["sd"] == pytest.approx(0.0158113883)
    assert out["ci_low"] == pytest.approx(0.02 - 0.0196324316)
    assert out["ci_high"] == pytest.approx(0.02 + 0.0196324316)
    assert out["t"] == pytest.approx(2 * np.sqrt(2))  # 0.02 / 0.0070711
    assert out["p"] == pytest.approx(0.0474206556, rel=1e-6)  # two-sided, t distribution with 4 df
    one = recipe.mean_ci(np.array([0.05]))
    assert one["mean"] == 0.05 and np.isnan(one["ci_low"]) and np.isnan(one["p"])  # one seed: no interval, no test


def test_holm_adjustment(recipe):
    # m = 4 finite p: sorted 0.005 x 4, 0.01 x 3, 0.03 x 2, 0.04 x 1 -> 0.02, 0.03, 0.06, max(0.04, 0.06)
    adjusted = recipe.holm([0.01, 0.04, 0.03, np.nan, 0.005])
    assert adjusted[[0, 1, 2, 4]] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[3])
    assert recipe.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_report_seed_level_tests_and_refused_units(recipe, tmp_path, capsys):
    results = tmp_path / "results"
    for seed, d in zip(range(3, 8), DIFFS):
        naive = [0.5, 0.6, 0.1, 0.2]
        write_unit(
            results, "base", seed, {"naivemix": naive, "afo": [r + d for r in naive], "stage1": [0.4, 0.5, 0.2, 0.3]}
        )
    # A seed that chose settings and a unit with a job at its epoch cap: both far off, both must stay out.
    write_unit(results, "base", 0, {"naivemix": [0.0] * 4, "afo": [0.9] * 4})
    write_unit(results, "base", 8, {"naivemix": [0.0] * 4, "afo": [0.9] * 4}, stop="max_epochs")
    write_unit(results, "s2plus", 9, {"stage2plus": [0.9] * 4}, role="choose")
    recipe.main(["report", "--results", str(results), "--csv", str(tmp_path / "report")])
    text = capsys.readouterr().out
    assert "Seeds used to choose settings (never reported): [0, 1, 2]; report seeds: [3, 4, 5, 6, 7]." in text
    assert "ddof=1" in text
    assert "| base      |      8 | not every training job stopped by patience: afo/stage3 |" in text
    assert "| base      |      0 | seed used to choose settings" in text
    assert "| s2plus    |      9 | seed used to choose settings" in text
    assert "| afo (S3) | 0.370 ± 0.016 (n=5) |" in text  # 0.35 + mean diff 0.02, sd of the diffs
    assert "Description only, not a test" in text
    tests = pd.read_csv(tmp_path / "report" / "tests.csv").set_index(["a", "b", "dataset", "group"])
    row = tests.loc[("afo", "naivemix", "nsd", "all")]
    assert row["n_seeds"] == 5
    assert row["mean"] == pytest.approx(0.02)
    assert row["ci_low"] == pytest.approx(0.02 - 0.0196324316)
    assert row["p"] == pytest.approx(0.0474206556, rel=1e-6)
    # The family: afo - naivemix and afo - stage1 (no stage2 here), per nsd all/early/late = 6. afo - stage1 has
    # afo - naivemix's differences on all voxels (same p) and +-0.1 more per group (two tiny p): after those two,
    # Holm multiplies the four equal p by 4.
    assert len(tests) == 6 and "6 comparisons" in text
    assert tests.loc[("afo", "stage1", "nsd", "all"), "p"] == pytest.approx(row["p"])
    assert row["p_holm"] == pytest.approx(4 * 0.0474206556, rel=1e-6)
    units = pd.read_csv(tmp_path / "report" / "units.csv")
    assert units.use.sum() == 5


def test_collect_unit_writes_raw_output_of_its_models(recipe, tmp_path):
    work = tmp_path / "work" / "seed3"
    write_run(work, 3, BASE, capped=("ablation/frozenrm",))
    variant = recipe.VARIANTS["base"]
    dest = tmp_path / "results" / "base" / "seed3"
    recipe.collect_unit(work, "base", variant, 3, dest, {"role": "report"})
    voxels = pd.read_csv(dest / "voxels.csv")
    assert list(voxels.columns) == ["model", "dataset", "subject", "voxel", "roi", "area", "group", "r_test"]
    assert sorted(voxels.model.unique()) == ["afo", "naivemix", "stage1", "stage2"]  # not frozenrm: another unit's
    assert voxels.loc[(voxels.model == "stage1") & (voxels.group == "late"), "r_test"].mean() == pytest.approx(0.28)
    jobs = pd.read_csv(dest / "training.csv")
    # The capped ablation is not behind the base unit's models, so it does not count against this unit.
    assert "ablation/frozenrm" not in set(jobs.model) and set(jobs.stop_reason) == {"patience"}
    unit = json.loads((dest / "unit.json").read_text())
    assert unit["jobs_not_by_patience"] == [] and unit["conv_width"] == 48
    table2 = tmp_path / "results" / "table2" / "seed3"
    recipe.collect_unit(work, "table2", recipe.VARIANTS["table2"], 3, table2, {"role": "report"})
    assert json.loads((table2 / "unit.json").read_text())["jobs_not_by_patience"] == ["ablation/frozenrm"]


def test_run_skips_done_units_and_writes_new_ones(recipe, tmp_path, monkeypatch, capsys):
    results, out = tmp_path / "results", tmp_path / "out"
    write_unit(results, "base", 3, {"afo": [0.5] * 4})
    config = tmp_path / "hetero.yaml"
    config.write_text(yaml.safe_dump({"simulate": {"seed": 0}, "train": {"seed": 0}, "afo": {}, "model": {}}))
    calls = []
    real_run = recipe.subprocess.run

    def fake_run(cmd, **kwargs):
        if "snakemake" not in cmd:
            return real_run(cmd, **kwargs)
        work = Path(cmd[cmd.index("-d") + 1])
        calls.append(work.name)
        write_run(work, int(work.name.removeprefix("seed")), BASE)

    monkeypatch.setattr(recipe.subprocess, "run", fake_run)
    args = ["run", "--variants", "base", "--seeds", "3", "4", "--config", str(config), "--out", str(out)]
    recipe.main([*args, "--results", str(results), "--dry-run"])
    text = capsys.readouterr().out
    minutes = recipe.estimate_minutes("base", recipe.VARIANTS["base"])
    assert "unit base seed 3: done (skipped)" in text and f"unit base seed 4: to run, ~{minutes:.0f} min" in text
    assert calls == []
    recipe.main([*args, "--results", str(results)])
    assert calls == ["seed4"]  # seed 3's raw output is there: not run again
    unit = json.loads((results / "base" / "seed4" / "unit.json").read_text())
    assert unit["role"] == "report" and unit["models"] == ["afo", "naivemix", "stage1", "stage2"]
    assert (results / "base" / "seed3" / "voxels.csv").read_text().count("\n") == 5  # untouched
    recipe.main([*args, "--results", str(results)])
    assert calls == ["seed4"]


def test_capacity_sweep_afo_minus_naivemix_and_share_kept(recipe, tmp_path, capsys):
    results = tmp_path / "results"
    naive = [0.5, 0.5, 0.5, 0.5]
    # width 48 (the base unit): S1 gains 0.1 everywhere, afo keeps 0.06 and 0.08 of it -> share 0.6, 0.8
    for seed, keep in ((3, 0.06), (4, 0.08)):
        write_unit(results, "base", seed, {"naivemix": naive, "stage1": [0.6] * 4, "afo": [0.5 + keep] * 4})
    # width 96: S1 gains 0.2, afo keeps 0.2 and 0.1 -> share 1.0, 0.5
    for seed, keep in ((3, 0.2), (4, 0.1)):
        write_unit(results, "width96", seed, {"naivemix": naive, "stage1": [0.7] * 4, "afo": [0.5 + keep] * 4}, width=96)  # fmt: skip
    recipe.main(["report", "--results", str(results), "--csv", str(tmp_path / "report")])
    text = capsys.readouterr().out
    assert "Capacity sweep" in text and "6 comparisons" in text  # 2 widths x nsd all, early, late
    sweep = pd.read_csv(tmp_path / "report" / "sweep.csv").set_index(["conv_width", "group"])
    w48, w96 = sweep.loc[(48, "all")], sweep.loc[(96, "all")]
    assert w48["afo_minus_naivemix"] == pytest.approx(0.07) and w48["share_kept"] == pytest.approx(0.7)
    assert w96["afo_minus_naivemix"] == pytest.approx(0.15) and w96["share_kept"] == pytest.approx(0.75)
    # two seeds: half width t(0.975, 1) * sd / sqrt(2) = 12.7062 * 0.0141421 / 1.41421 = 0.127062
    assert w48["share_ci_high"] == pytest.approx(0.7 + 12.7062047 * 0.1, rel=1e-6)
    assert w48["ci_low"] == pytest.approx(0.07 - 12.7062047 * 0.01, rel=1e-6)
    # the width variants are not in Tables 2 and 3: afo there is the base's only (0.57, not 0.57 and 0.65 mixed)
    assert "| afo (S3) | 0.570 ± 0.014 (n=2) |" in text


# validation r per voxel: voxel 0 best on naivemix, 1 on stage1, 2 on stage2, 3 on afo
VAL = {
    "naivemix": [0.9, 0.1, 0.1, 0.1],
    "stage1": [0.1, 0.9, 0.1, 0.1],
    "stage2": [0.1, 0.1, 0.9, 0.1],
    "afo": [0.1, 0.1, 0.1, 0.9],
    "frozenrm": [1.0, 1.0, 1.0, 1.0],  # not a base model: never chosen
}


def test_recollect_adds_r_val_and_the_report_selects_per_voxel_on_it(recipe, tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "out"
    for seed in (3, 4):
        write_run(out / f"seed{seed}", seed, BASE)  # an older work folder: no r_val
        recipe.collect_unit(
            out / f"seed{seed}", "base", recipe.VARIANTS["base"], seed, results / "base" / f"seed{seed}", {}
        )
    assert "r_val" not in pd.read_csv(results / "base" / "seed3" / "voxels.csv")
    for seed in (3, 4):
        write_run(out / f"seed{seed}", seed, BASE, val=VAL)
    recipe.main(["recollect", "--variants", "base", "--seeds", "3", "4", "--out", str(out), "--results", str(results)])
    voxels = pd.read_csv(results / "base" / "seed3" / "voxels.csv")
    assert list(voxels.columns) == recipe.VOXEL_COLUMNS
    assert voxels.set_index(["model", "voxel"]).loc[("stage2", 2), "r_val"] == 0.9

    units, table = recipe.read_units(results, [0, 1, 2])
    chosen = recipe.validation_selection(table).set_index(["seed", "voxel"])["r_test"]
    # per voxel the test r of the model best on validation: naivemix, stage1, stage2, afo (+ seed * 0.01)
    expected = [BASE["naivemix"][0], BASE["stage1"][1], BASE["stage2"][2], BASE["afo"][3]]
    np.testing.assert_allclose(chosen.loc[3].to_numpy(), np.asarray(expected) + 0.03)
    np.testing.assert_allclose(chosen.loc[4].to_numpy(), np.asarray(expected) + 0.04)
    recipe.main(["report", "--results", str(results), "--csv", str(tmp_path / "report")])
    text = capsys.readouterr().out
    assert "| per voxel, best val r of NaiveMix/S1/S2/S3 | 0.460 ± 0.007 (n=2) |" in text
    tests = pd.read_csv(tmp_path / "report" / "tests.csv").set_index(["a", "b", "dataset", "group"])
    assert tests.loc[("select_val", "afo", "nsd", "all"), "mean"] == pytest.approx(0.425 - 0.5)  # per seed

    # a work folder with other test r than the committed unit is refused
    write_run(out / "seed3", 5, BASE, val=VAL)
    with pytest.raises(SystemExit, match="does not hold the unit's models"):
        recipe.main(["recollect", "--variants", "base", "--seeds", "3", "--out", str(out), "--results", str(results)])


def test_convergence_check_doubles_hetero_budget_and_reports_the_gain(recipe, tmp_path, capsys):
    hetero = yaml.safe_load((ROOT / "config" / "hetero.yaml").read_text())["train"]
    sets = dict(a.split("=") for a in recipe.VARIANTS["base2x"].sets)
    assert sets == {"train.max_epochs": str(2 * hetero["max_epochs"]), "train.patience": str(2 * hetero["patience"])}
    results = tmp_path / "results"
    write_unit(results, "base", 3, {"afo": [0.5] * 4})
    write_unit(results, "base2x", 3, {"afo": [0.5] * 4})
    jobs = ["stage0/seed0", "afo/stage3"]
    for variant, val_r, epochs in (("base", [0.50, 0.30], [30, 20]), ("base2x", [0.502, 0.31], [45, 60])):
        stops = ["patience", "patience"]
        frame = {"model": jobs, "stop_reason": stops, "epochs": epochs, "val_r": val_r}
        pd.DataFrame(frame).to_csv(results / variant / "seed3" / "training.csv", index=False)
    check = recipe.convergence_check(results).set_index("job")
    assert check.loc["stage0/seed0", "gain_2x"] == pytest.approx(0.002) and check.loc["stage0/seed0", "converged"]
    assert check.loc["afo/stage3", "gain_2x"] == pytest.approx(0.01) and not check.loc["afo/stage3", "converged"]
    recipe.main(["report", "--results", str(results), "--csv", str(tmp_path / "report")])
    assert "1 of 2 jobs" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "report" / "convergence_check.csv")) == 2
