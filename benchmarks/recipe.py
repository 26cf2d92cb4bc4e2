"""The paper's Tables 2 and 3 on the heterogeneous synthetic experiment (config/hetero.yaml), over seeds.

The work is planned as units, one variant on one seed (VARIANTS: ``base`` = naivemix, S1, S2, afo; ``baselines`` =
NoDK, randROI S1-S3; ``s2plus`` = S2+1 and the S3 after it; ``table2`` = the TopyNeck ablations; ``width<W>`` = the
capacity sweep). For every unit the real workflow runs (snakemake, this repository's Snakefile) in a work folder
``<out>/[<work>/]seed<N>`` with a generated config: config/hetero.yaml (or --config) with ``simulate.seed`` and
``train.seed`` set to N, so each seed is a different synthetic brain AND a different initialisation. Only the
encoding tables of the unit's models are asked for (``results/encoding/<model>/voxels.csv``).

When a unit finishes, its small raw output is written to ``<results>/<variant>/seed<N>/`` (meant to be committed):
``voxels.csv`` (model, dataset, subject, voxel, roi, area, group, r_test, r_val), ``training.csv`` (how every training
job behind the unit's models ended, results/models/training.csv's columns) and ``unit.json`` (settings, seconds,
role; written last, so a unit counts as done only once all three are there). A later ``run`` skips done units, so
the tables fill in over several sessions. ``report`` reads only these raw outputs:

- Units whose training jobs did not all stop by patience (a model at its epoch cap is unfinished) are listed
  and left out; so are units of the seeds used to choose settings (``--choose-seeds``; a unit run on one of them
  is recorded with role ``choose``): settings chosen on a seed never report on it.
- Table 3 (recipe): naivemix, S1, S2, S2+1, S3 after S2+1, afo (= S3), NoDK, randROI S1/S2/S3; Table 2
  (TopyNeck): FullTopyNeck (= naivemix, the all-ROI stage-0 model), FrozenRM, FrozenLS, NoRegLS (lambda_entropy
  0), NoRegLS-hard (one layer per voxel), w/o GlobalPool. Each cell: mean test r over the dataset's (or its
  early/mid/late group's) voxels, then mean +- sd (ddof=1) over seeds. Table 3 also has ``select_val``: per voxel,
  the base unit's model (naivemix, S1, S2, S3) with the highest validation r, the better predictor a user could
  assemble without test data, compared with the single stage-3 model.
- Seed-level tests (the seed is the unit of replication: voxels of one brain are not independent): for each
  pair (PAIRS), the per-seed difference of the cell means, their mean with a 95% t confidence interval, a
  paired t-test across seeds (one-sample t-test of the differences), n seeds, and the Holm-adjusted p over
  every test of the table (their number is printed).
- The voxel-level Wilcoxon signed-rank test is printed only as a description of how consistent a difference is
  across voxels, never as the test.
- The capacity sweep: per conv width, afo - naivemix and the share of stage 1's gain over naivemix that stage 3
  keeps ((afo - naivemix) / (S1 - naivemix), per seed), with seed-level confidence intervals.

Usage::

    python benchmarks/recipe.py run --variants base baselines --seeds 3 4 5 6 7   # skips units already done
    python benchmarks/recipe.py run --variants base --seeds 3 --dry-run           # the plan: done / to run, minutes
    python benchmarks/recipe.py report                                            # Markdown on stdout
    python benchmarks/recipe.py recollect --variants base --seeds 3 4             # rewrite voxels.csv (new columns)

An investigation variant: ``run --tag <name> --set key.sub=value --models ... --reuse-from --reuse data stage0``
(``--set`` takes a YAML value), run on the choice seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Table rows: (label, model name in the raw outputs) in the paper's order.
# The better predictor a user could assemble from the base unit's models without test data: per voxel, the model
# with the highest validation r (afo.evaluation never sees it; only this report builds it from the raw outputs).
SELECTION = "select_val"
TABLE3 = [("NaiveMix", "naivemix"), ("S1", "stage1"), ("S2", "stage2"), ("S2+1", "stage2plus"), ("afo (S3)", "afo"),
          ("S3 after S2+1", "afo_s2plus"), ("NoDK", "nodk"), ("randROI S1", "randroi_stage1"), ("randROI S2", "randroi_stage2"),
          ("randROI S3", "randroi"), ("per voxel, best val r of NaiveMix/S1/S2/S3", SELECTION)]  # fmt: skip
TABLE2 = [("FullTopyNeck", "naivemix"), ("FrozenRM", "frozenrm"), ("FrozenLS", "frozenls"), ("NoRegLS (lambda 0)", "noregls"),
          ("NoRegLS (hard)", "hardls"), ("w/o GlobalPool", "noglobalpool")]  # fmt: skip
ABLATIONS = [model for _, model in TABLE2[1:]]
PAIRS = [
    ("afo", "naivemix"),
    ("afo", "stage1"),  # the single stage-3 model against the assembled per-ROI models
    ("afo", "stage2"),
    (SELECTION, "afo"),
    ("stage2", "stage1"),
    ("stage2plus", "stage2"),
    ("randroi_stage2", "randroi_stage1"),
    ("nodk", "stage1"),
    ("nodk", "stage2"),
] + [(ablation, "naivemix") for ablation in ABLATIONS]

# Seeds 0-2 chose settings (dk_weight on 0 and 2, the neck and veROI count on 0 and 1): they never report.
CHOOSE_SEEDS = [0, 1, 2]
REPORT_SEEDS = [3, 4, 5, 6, 7]

# What a variant may take from the base run of its seed (hard links; a model's resumable work/ folder never).
# A variant that changes the veROIs (afo.veroi.*) must not reuse "rois": a linked file carries no record of the
# settings it was made with, so Snakemake would not see that it is stale.
REUSABLE = {
    "data": ["resources", "results/prepared", "results/features"],
    "stage0": ["results/models/stage0"],
    "rois": ["results/rois"],
    "stage1": ["results/models/afo/stage1"],
    "stage2": ["results/models/afo/stage2"],
}

# The training jobs behind an evaluated model (folders under results/models, glob patterns): every recipe model
# stands on stage 0 (the frozen neck, the veROIs and random ROIs of the same sizes), each stage on the one before.
_S1 = ["stage0/seed*", "afo/stage1/roi*"]
_R1 = ["stage0/seed*", "randroi/stage1/roi*"]
JOBS_OF = {
    "naivemix": ["stage0/seed*"],
    "stage1": _S1,
    "stage2": _S1 + ["afo/stage2/roi*"],
    "stage2plus": _S1 + ["afo/stage2/roi*", "afo/stage2plus/roi*"],
    "afo": _S1 + ["afo/stage2/roi*", "afo/stage2plus/roi*", "afo/stage3"],
    "nodk": ["stage0/seed*", "afo/nodk/roi*"],
    "randroi_stage1": _R1,
    "randroi_stage2": _R1 + ["randroi/stage2/roi*", "randroi/stage2plus/roi*"],
    "randroi": _R1 + ["randroi/stage2/roi*", "randroi/stage2plus/roi*", "randroi/stage3"],
    "stage2_once": _S1 + ["afo/stage2/roi*"],
}
JOBS_OF["afo_s2plus"] = JOBS_OF["afo"]  # the s2plus variant's afo, named apart from the base's
for _ablation in ABLATIONS:
    JOBS_OF[_ablation] = [f"ablation/{_ablation}"]


@dataclass(frozen=True)
class Variant:
    """One kind of unit: which models a seed's run evaluates and how its config differs from the base."""

    models: tuple[str, ...]  # workflow model names (results/encoding/<name>)
    work: str = ""  # work folder under --out ("" = the seed's base run, shared by the variants without --set)
    sets: tuple[str, ...] = ()  # --set assignments
    s2_plus_one: bool = False
    reuse: tuple[str, ...] = ()  # REUSABLE levels hard-linked from the base run of the seed
    rename: dict[str, str] = field(default_factory=dict)  # workflow name -> name in the raw output and tables
    jobs: int = 0  # new training jobs (for the estimate; 3 veROIs)
    scale: float = 1.0  # cost of one job relative to the base width's (conv width)


BASE_MODELS = ("naivemix", "stage1", "stage2", "afo")
# The capacity sweep: conv width (out_dim two thirds of it, the ratio of config/hetero.yaml's 48/32) below and well
# above the base's 48, which is the sweep's middle point (the base unit). Job cost grows with the conv blocks'
# width^2 but the backbone forward (the same for all widths) dominates at small widths: scale is a guess.
WIDTHS = {24: 0.8, 96: 1.6, 192: 3.5}
VARIANTS = {
    "base": Variant(BASE_MODELS, jobs=8),
    "baselines": Variant(("nodk", "randroi_stage1", "randroi_stage2", "randroi"), jobs=10),
    "s2plus": Variant(("stage2", "afo"), work="s2plus", s2_plus_one=True, reuse=tuple(REUSABLE),
                      rename={"stage2": "stage2plus", "afo": "afo_s2plus"}, jobs=4),
    "table2": Variant(tuple(ABLATIONS), jobs=len(ABLATIONS)),
    # The convergence check of config/hetero.yaml (train.max_epochs 300, patience 10): every base model trained
    # again with twice the epochs and patience; converged = best validation r up by less than CONVERGED_WITHIN.
    "base2x": Variant(BASE_MODELS, work="base2x", reuse=("data",), sets=("train.max_epochs=600", "train.patience=20"),
                      jobs=8, scale=1.5),
    **{f"width{w}": Variant(BASE_MODELS, work=f"width{w}", reuse=("data",), jobs=8, scale=scale,
                            sets=(f"model.conv_width={w}", f"model.out_dim={2 * w // 3}"))
       for w, scale in WIDTHS.items()},
}  # fmt: skip
CONVERGED_WITHIN = 0.005
MAIN_VARIANTS = ["base", "baselines", "s2plus", "table2"]  # the tables; the width variants only feed the sweep
# Estimate of a unit's minutes on the 2-core machine: data (simulation, backbone features) once per work folder,
# then each training job at convergence. Measured: the base unit of seed 3 (8 jobs, every one stopped by
# patience) took 401 s beside one other job; its setup about 1.5 min, a job about 0.65 min.
SETUP_MINUTES = 1.5
JOB_MINUTES = 0.65


def estimate_minutes(name: str, variant: Variant) -> float:
    """The base unit makes its seed's data; the others share or link it."""
    setup = SETUP_MINUTES if name == "base" or (variant.work and "data" not in variant.reuse) else 1.0
    return setup + variant.jobs * JOB_MINUTES * variant.scale


def _set(config: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    node = config
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(value)


def seed_config(base: dict, seed: int, sets: list[str] | tuple[str, ...], s2_plus_one: bool) -> dict:
    """The generated config of one seed: the base with simulate.seed = train.seed = seed and the --set keys."""
    config = json.loads(json.dumps(base))
    config["simulate"]["seed"] = seed
    config["train"]["seed"] = seed
    config["afo"]["s2_plus_one"] = bool(s2_plus_one)
    for assignment in sets:
        _set(config, assignment)
    return config


def model_names(config: dict) -> list[str]:
    """The evaluated models of a config (what common.smk's EVALUATED holds), in table order."""
    afo = config["afo"]
    names = ["afo", "stage1", "stage2"]
    if afo.get("baselines", {}).get("naivemix", True):
        names.append("naivemix")
    if afo.get("s2_plus_one"):
        names.append("stage2_once")
    if afo.get("baselines", {}).get("nodk"):
        names.append("nodk")
    if afo.get("baselines", {}).get("randroi"):
        names += ["randroi", "randroi_stage1", "randroi_stage2"]
    names += list(config.get("ablations") or {})
    return names


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` under ``dst`` (same mtimes, so snakemake sees them up to date), skipping
    training work folders (a job that finds one resumes from it)."""
    for path in src.rglob("*"):
        if path.is_file() and "work" not in path.relative_to(src).parts:
            target = dst / path.relative_to(src)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)


# -- units: run, then write the raw output ----------------------------------------------------------------

UNIT_FILES = ("voxels.csv", "training.csv", "unit.json")


def unit_dir(results: Path, variant: str, seed: int) -> Path:
    return results / variant / f"seed{seed}"


def unit_done(results: Path, variant: str, seed: int) -> bool:
    """A unit is done once its unit.json (written after the two tables) is there."""
    return (unit_dir(results, variant, seed) / "unit.json").is_file()


def training_jobs(work: Path, models: list[str]) -> pd.DataFrame:
    """How every training job behind ``models`` ended, from the model files under ``work/results/models``
    (afo.evaluation.training's table, the rows of results/models/training.csv)."""
    from afo.evaluation.training import training_table

    unknown = sorted(set(models) - set(JOBS_OF))
    if unknown:
        raise SystemExit(f"no training jobs known for {unknown}: add them to JOBS_OF")
    root = work / "results" / "models"
    files = sorted({f for m in models for pattern in JOBS_OF[m] for f in root.glob(f"{pattern}/model.pt")})
    return training_table(files, root=root)


VOXEL_COLUMNS = ["model", "dataset", "subject", "voxel", "roi", "area", "group", "r_test", "r_val"]


def unit_voxels(table: pd.DataFrame) -> pd.DataFrame:
    """A unit's voxels.csv rows: the columns of VOXEL_COLUMNS the work folder's tables have."""
    return table[[c for c in VOXEL_COLUMNS if c in table.columns]]


def variant_table(work: Path, variant: Variant) -> pd.DataFrame:
    """load_seed's rows of the variant's models, named as in the tables."""
    table = load_seed(work)
    table = table[table.model.isin(variant.models)].copy()
    table["model"] = table["model"].map(lambda m: variant.rename.get(m, m))
    return table


def collect_unit(work: Path, name: str, variant: Variant, seed: int, dest: Path, meta: dict) -> None:
    """Write a finished unit's raw output to ``dest``: the per-voxel test r of its models (named as in the
    tables), how their training jobs ended, and unit.json last."""
    from afo.io.tables import write_csv

    table = variant_table(work, variant)
    models = sorted(table.model.unique())
    dest.mkdir(parents=True, exist_ok=True)
    write_csv(unit_voxels(table), dest / "voxels.csv")
    jobs = training_jobs(work, models)
    write_csv(jobs, dest / "training.csv")
    config = yaml.safe_load((work / "config.yaml").read_text())
    record = {
        "variant": name,
        "seed": seed,
        "models": models,
        "sets": list(variant.sets),
        "conv_width": config["model"]["conv_width"],
        "out_dim": config["model"]["out_dim"],
        # The generated config's sections as written (the workflow's defaults fill in what they leave out).
        "config": {key: config.get(key) for key in ("model", "train", "afo")},
        "jobs": len(jobs),
        "jobs_not_by_patience": jobs.loc[jobs.stop_reason != "patience", "model"].tolist(),
        **meta,
    }
    (dest / "unit.json").write_text(json.dumps(record, indent=1) + "\n")


def work_folder(out: str | Path, variant: Variant, seed: int) -> Path:
    root = Path(out) / variant.work if variant.work else Path(out)
    return (root / f"seed{seed}").resolve()


def recollect(args: argparse.Namespace) -> None:
    """Rewrite the voxels.csv of done units from their work folders (units written before a column was added,
    e.g. r_val); training.csv and unit.json stay. Refuses a unit whose work folder gives other test r."""
    results = Path(args.results)
    for name, variant, seed in plan(args):
        dest = unit_dir(results, name, seed)
        work = work_folder(args.out, variant, seed)
        if not unit_done(results, name, seed):
            print(f"[recipe] unit {name} seed {seed}: not done, nothing to rewrite")
            continue
        if not (work / "results" / "encoding").is_dir():
            raise SystemExit(f"unit {name} seed {seed}: no work folder {work} to rewrite it from")
        old = pd.read_csv(dest / "voxels.csv", dtype={"subject": str, "area": str, "group": str})
        new = unit_voxels(variant_table(work, variant))
        keys = ["model", "dataset", "subject", "voxel"]
        both = old.merge(new, on=keys, suffixes=("", "_new"), how="outer", indicator=True)
        same = (both["_merge"] == "both").all() and np.allclose(
            both["r_test"], both["r_test_new"], equal_nan=True, atol=1e-6
        )
        if not same:
            raise SystemExit(
                f"unit {name} seed {seed}: {work} does not hold the unit's models (other voxels or test r)"
            )
        from afo.io.tables import write_csv

        write_csv(new, dest / "voxels.csv")
        print(f"[recipe] unit {name} seed {seed}: voxels.csv rewritten ({', '.join(new.columns)})")


def _git_commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


def plan(args: argparse.Namespace) -> list[tuple[str, Variant, int]]:
    """The units to run, in order (variant by variant, seed by seed); a custom --tag makes one variant."""
    if args.tag:
        if not args.models:
            raise SystemExit("--tag needs --models (the models the variant evaluates)")
        reuse = tuple(args.reuse) if args.reuse_from else ()
        variants = {args.tag: Variant(tuple(args.models), work=args.tag, sets=tuple(args.set), s2_plus_one=args.s2_plus_one, reuse=reuse)}  # fmt: skip
    else:
        unknown = sorted(set(args.variants) - set(VARIANTS))
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
        variants = {v: VARIANTS[v] for v in args.variants}
    return [(name, variant, seed) for name, variant in variants.items() for seed in args.seeds]


def run(args: argparse.Namespace) -> None:
    base = yaml.safe_load(Path(args.config).read_text())
    results = Path(args.results)
    units = plan(args)
    for name, variant, seed in units:
        state = (
            "done (skipped)"
            if unit_done(results, name, seed)
            else f"to run, ~{estimate_minutes(name, variant):.0f} min"
        )
        print(f"[recipe] unit {name} seed {seed}: {state}", flush=True)
    if args.dry_run:
        return
    for name, variant, seed in units:
        if unit_done(results, name, seed):
            continue
        stale = {"rois", "stage1", "stage2"} & set(variant.reuse)
        if stale and any(a.startswith("afo.veroi.") for a in variant.sets):
            raise SystemExit(
                f"--set afo.veroi.* makes new veROIs: the base run's {sorted(stale)} would be stale; "
                "reuse only data and stage0 (--reuse data stage0)"
            )
        work = work_folder(args.out, variant, seed)
        work.mkdir(parents=True, exist_ok=True)
        config = seed_config(base, seed, variant.sets, variant.s2_plus_one)
        (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        source = Path(args.out).resolve() / f"seed{seed}"
        if variant.reuse and not (source / "config.yaml").is_file():
            # Without it the variant would silently make everything again, on other data if the base differs.
            raise SystemExit(f"unit {name} seed {seed} reuses the base run of seed {seed}: run --variants base first")
        for level in variant.reuse:
            for rel in REUSABLE[level]:
                if (source / rel).exists():
                    link_tree(source / rel, work / rel)
        targets = [f"results/encoding/{n}/voxels.csv" for n in variant.models]
        cmd = [sys.executable, "-m", "snakemake", *targets, "-s", str(ROOT / "Snakefile"), "-d", str(work), "--configfile",
               str(work / "config.yaml"), "--cores", str(args.cores), "--rerun-incomplete"] + (["--nolock"] if args.nolock else [])  # fmt: skip
        start = time.time()
        print(f"[recipe] unit {name} seed {seed}: {' '.join(cmd)}", flush=True)
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        subprocess.run(cmd, check=True, env=env)
        seconds = time.time() - start
        meta = {
            "role": "choose" if seed in args.choose_seeds else "report",
            "wall_seconds": round(seconds),
            "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
            "commit": _git_commit(),
            "finished": time.strftime("%Y-%m-%d %H:%M"),
        }
        dest = unit_dir(results, name, seed)
        collect_unit(work, name, variant, seed, dest, meta)
        capped = json.loads((dest / "unit.json").read_text())["jobs_not_by_patience"]
        note = f"; NOT converged, the report leaves it out: {capped}" if capped else ""
        print(f"[recipe] unit {name} seed {seed}: done in {seconds:.0f} s, raw output in {dest}{note}", flush=True)


# -- reading a work folder ----------------------------------------------------------------------------------


def _group_of(config: dict) -> dict[str, str]:
    return dict(config["evaluation"].get("area_groups") or {})


def _truth_areas(work: Path) -> pd.DataFrame:
    """dataset, subject, voxel, area of every simulated training voxel (the simulator's ground truth)."""
    config = yaml.safe_load((work / "config.yaml").read_text())
    rows = []
    for dataset, spec in config["datasets"].items():
        if spec.get("format") != "synthetic" or spec.get("role", "train") != "train":
            continue
        for path in sorted((work / "resources" / "synthetic" / spec["part"]).glob("*/ground_truth.csv")):
            t = pd.read_csv(path, usecols=["voxel", "area"], dtype={"area": str})
            rows.append(t.assign(dataset=dataset, subject=path.parent.name))
    return pd.concat(rows, ignore_index=True)


def load_seed(work: Path) -> pd.DataFrame:
    """Long table: model, dataset, subject, voxel, roi, area, group, r_test, r_val of one work folder's models."""
    from afo.io.tables import read_voxels

    config = yaml.safe_load((work / "config.yaml").read_text())
    groups = _group_of(config)
    truth = _truth_areas(work)
    frames = []
    for voxels in sorted((work / "results" / "encoding").glob("*/voxels.csv")):
        v = read_voxels(voxels)
        v = v[[c for c in ("dataset", "subject", "voxel", "roi", "r_test", "r_val") if c in v.columns]]
        frames.append(v.assign(model=voxels.parent.name))
    table = pd.concat(frames, ignore_index=True)
    table["subject"] = table["subject"].astype(str)
    table = table.merge(truth, on=["dataset", "subject", "voxel"], how="left")
    table["group"] = table["area"].map(groups)
    return table


# -- report: raw outputs -> tables ----------------------------------------------------------------------


def read_units(results: Path, choose_seeds: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every done unit under ``results``: (units, voxels). ``units`` has one row per unit with ``use`` (True
    for a report unit whose training jobs all stopped by patience) and why not; ``voxels`` holds the usable
    units' per-voxel rows, with variant, seed and conv_width."""
    units, frames = [], []
    for record in sorted(results.glob("*/seed*/unit.json")):
        unit = json.loads(record.read_text())
        jobs = pd.read_csv(record.parent / "training.csv")
        not_patience = jobs.loc[jobs.stop_reason != "patience", "model"].tolist()
        why = ""
        if unit["seed"] in choose_seeds or unit.get("role") == "choose":
            why = "seed used to choose settings"
        elif jobs.empty:
            why = "no training jobs recorded"
        elif not_patience:
            why = f"not every training job stopped by patience: {', '.join(not_patience)}"
        units.append({"variant": unit["variant"], "seed": unit["seed"], "conv_width": unit.get("conv_width"),
                      "jobs": len(jobs), "wall_seconds": unit.get("wall_seconds"), "use": not why, "left_out": why})  # fmt: skip
        if not why:
            v = pd.read_csv(record.parent / "voxels.csv", dtype={"subject": str, "area": str, "group": str})
            frames.append(v.assign(variant=unit["variant"], seed=unit["seed"], conv_width=unit.get("conv_width")))
    columns = ["variant", "seed", "conv_width", "jobs", "wall_seconds", "use", "left_out"]
    voxels = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "seed", "r_test"])
    return pd.DataFrame(units, columns=columns), voxels


def validation_selection(table: pd.DataFrame, models: tuple[str, ...] = BASE_MODELS) -> pd.DataFrame:
    """Rows of model SELECTION: per seed and voxel, the test r of whichever of ``models`` (one unit's, the base
    variant's) has the highest validation r there; voxels without a validation r for every model are left out.
    Empty when the raw outputs have no r_val (units written before it was recorded)."""
    if "r_val" not in table:
        return table.iloc[0:0]
    keys = ["variant", "seed", "dataset", "subject", "voxel"]
    rows = table[(table.variant == "base") & table.model.isin(models)]
    val = rows.pivot_table(index=keys, columns="model", values="r_val", aggfunc="first").reindex(columns=list(models))
    val = val[val.notna().all(axis=1)]
    if val.empty:
        return table.iloc[0:0]
    best = val.idxmax(axis=1).rename("model").reset_index()
    chosen = best.merge(rows, on=[*keys, "model"], how="left")
    return chosen.assign(model=SELECTION)[rows.columns]


def convergence_check(results: Path) -> pd.DataFrame:
    """Per seed with both a ``base`` and a ``base2x`` unit: every training job's best validation r in each, and
    the gain of twice the epochs and patience (converged when below CONVERGED_WITHIN)."""
    rows = []
    for again in sorted(results.glob("base2x/seed*/training.csv")):
        first = results / "base" / again.parent.name / "training.csv"
        if not first.is_file():
            continue
        a = pd.read_csv(first).set_index("model")
        b = pd.read_csv(again).set_index("model")
        for job in a.index.intersection(b.index):
            gain = float(b.at[job, "val_r"] - a.at[job, "val_r"])
            rows.append({"seed": int(again.parent.name.removeprefix("seed")), "job": job,
                         "val_r": a.at[job, "val_r"], "val_r_2x": b.at[job, "val_r"], "gain_2x": gain,
                         "epochs": a.at[job, "epochs"], "epochs_2x": b.at[job, "epochs"],
                         "stop_reason_2x": b.at[job, "stop_reason"], "converged": gain < CONVERGED_WITHIN})  # fmt: skip
    columns = ["seed", "job", "val_r", "val_r_2x", "gain_2x", "epochs", "epochs_2x", "stop_reason_2x", "converged"]
    return pd.DataFrame(rows, columns=columns)


def investigations(results: Path, choose_seeds: list[int]) -> pd.DataFrame:
    """Custom variants (``run --tag``) against the base unit of the same seed: per unit, model and dataset, the
    difference of the dataset's mean test r (variant - base), with the seed's role (choose | report). Units whose
    jobs did not all stop by patience, or without a base unit of their seed, are skipped."""
    known = set(VARIANTS)
    rows = []
    for record in sorted(results.glob("*/seed*/unit.json")):
        unit = json.loads(record.read_text())
        variant, seed = unit["variant"], int(unit["seed"])
        base = results / "base" / f"seed{seed}" / "voxels.csv"
        jobs = pd.read_csv(record.parent / "training.csv")
        if variant in known or not base.is_file() or jobs.empty or (jobs.stop_reason != "patience").any():
            continue
        role = "choose" if seed in choose_seeds or unit.get("role") == "choose" else "report"
        mine = cell_means(pd.read_csv(record.parent / "voxels.csv", dtype={"subject": str}).assign(group=None))
        theirs = cell_means(pd.read_csv(base, dtype={"subject": str}).assign(group=None))
        both = mine.merge(theirs, on=["model", "dataset", "group"], suffixes=("", "_base"))
        for r in both[both.group == "all"].itertuples():
            rows.append({"variant": variant, "sets": "; ".join(unit.get("sets") or []), "model": r.model,
                         "dataset": r.dataset, "seed": seed, "role": role, "r": r.r, "r_base": r.r_base,
                         "diff": r.r - r.r_base})  # fmt: skip
    columns = ["variant", "sets", "model", "dataset", "seed", "role", "r", "r_base", "diff"]
    return pd.DataFrame(rows, columns=columns)


def investigation_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant, model and dataset: the choose seeds' differences as they were (what the choice saw), and
    over the report seeds the mean difference with its 95% CI and t-test (the seed as the unit)."""
    out = []
    for (variant, model, dataset), d in rows.groupby(["variant", "model", "dataset"], sort=True):
        chosen = d[d.role == "choose"].sort_values("seed")
        report = d[d.role == "report"]
        stats = mean_ci(report["diff"].to_numpy())  # NaN where fewer than 2 report seeds
        out.append({"variant": variant, "sets": d["sets"].iloc[0], "model": model, "dataset": dataset,
                    "choose_seeds": " ".join(f"{s}: {v:+.4f}" for s, v in zip(chosen.seed, chosen["diff"])),
                    "n_report_seeds": len(report), "mean": stats["mean"], "ci_low": stats["ci_low"],
                    "ci_high": stats["ci_high"], "p": stats["p"],
                    "seeds_better": f"{int((report['diff'] > 0).sum())}/{len(report)}"})  # fmt: skip
    return pd.DataFrame(out)


def cell_means(table: pd.DataFrame) -> pd.DataFrame:
    """Mean test r per model and (dataset, group), with 'all' per dataset: columns model, dataset, group, r."""
    rows = []
    finite = table[np.isfinite(table["r_test"])]
    for (model, dataset), d in finite.groupby(["model", "dataset"]):
        rows.append({"model": model, "dataset": dataset, "group": "all", "r": d["r_test"].mean()})
        for group, g in d.groupby("group"):
            rows.append({"model": model, "dataset": dataset, "group": group, "r": g["r_test"].mean()})
    return pd.DataFrame(rows)


def seed_cells(table: pd.DataFrame) -> pd.DataFrame:
    """cell_means of every seed: columns model, dataset, group, r, seed."""
    if table.empty:
        return pd.DataFrame(columns=["model", "dataset", "group", "r", "seed"])
    return pd.concat([cell_means(t).assign(seed=s) for s, t in table.groupby("seed")], ignore_index=True)


def mean_ci(values: np.ndarray, level: float = 0.95) -> dict:
    """Mean, sd (ddof=1), the t confidence interval of the mean and the one-sample t-test against 0, over the
    seeds' values (NaN where fewer than 2 seeds)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    out = {"n_seeds": n, "mean": x.mean() if n else np.nan, "sd": np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "t": np.nan, "p": np.nan}  # fmt: skip
    if n < 2:
        return out
    sd = x.std(ddof=1)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n)
    out.update(sd=sd, ci_low=x.mean() - half, ci_high=x.mean() + half)
    if sd > 0:
        test = stats.ttest_1samp(x, 0.0)
        out.update(t=float(test.statistic), p=float(test.pvalue))
    return out


def holm(pvalues: pd.Series | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment over the finite p values (NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def seed_tests(cells: pd.DataFrame, pairs: list[tuple[str, str]] = PAIRS) -> pd.DataFrame:
    """Per-seed paired differences of the cell means (model a - model b, the seeds that have both), their mean
    with a 95% t confidence interval and the paired t-test across seeds, per dataset and group; p_holm over all
    rows of the table."""
    rows = []
    r = cells.set_index(["model", "dataset", "group", "seed"])["r"]
    for a, b in pairs:
        if a not in r.index.get_level_values(0) or b not in r.index.get_level_values(0):
            continue
        both = pd.concat({"a": r.loc[a], "b": r.loc[b]}, axis=1).dropna()
        for (dataset, group), d in both.groupby(level=["dataset", "group"]):
            diff = (d["a"] - d["b"]).to_numpy()
            rows.append({"a": a, "b": b, "dataset": dataset, "group": group, **mean_ci(diff),
                         "seeds_a_better": f"{int((diff > 0).sum())}/{len(diff)}"})  # fmt: skip
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = holm(table["p"])
    return table


def voxel_wilcoxon(table: pd.DataFrame, pairs: list[tuple[str, str]] = PAIRS) -> pd.DataFrame:
    """Description only (voxels of one brain are not independent, so this is not a test of the methods):
    Wilcoxon signed-rank statistic's p of per-voxel test r, a vs b, per dataset, every seed's voxels pooled."""
    from scipy.stats import wilcoxon

    rows = []
    for a, b in pairs:
        x = table[table.model == a].set_index(["seed", "dataset", "subject", "voxel"])["r_test"]
        y = table[table.model == b].set_index(["seed", "dataset", "subject", "voxel"])["r_test"]
        both = pd.concat({"a": x, "b": y}, axis=1).dropna()
        if both.empty:
            continue
        for dataset, d in both.groupby(level="dataset"):
            diff = d["a"] - d["b"]
            test = wilcoxon(d["a"], d["b"]) if (diff != 0).any() else None
            rows.append({"a": a, "b": b, "dataset": dataset, "n_voxels": len(d), "mean_diff": diff.mean(),
                         "median_diff": diff.median(), "frac_a_better": (diff > 0).mean(),
                         "p_wilcoxon_voxels": test.pvalue if test is not None else np.nan})  # fmt: skip
    return pd.DataFrame(rows)


def capacity_sweep(table: pd.DataFrame) -> pd.DataFrame:
    """Per conv width, dataset and group: afo - naivemix over seeds and the share of stage 1's gain over
    naivemix that stage 3 keeps, (afo - naivemix) / (S1 - naivemix) per seed. A seed whose S1 gain is not
    positive has no share (there is nothing to keep); their number is given."""
    rows = []
    for width, t in table.groupby("conv_width"):
        r = seed_cells(t).set_index(["model", "dataset", "group", "seed"])["r"]
        models = set(r.index.get_level_values(0))
        if not {"afo", "naivemix", "stage1"} <= models:
            continue
        both = pd.concat({"afo": r.loc["afo"], "naive": r.loc["naivemix"], "s1": r.loc["stage1"]}, axis=1).dropna()
        for (dataset, group), d in both.groupby(level=["dataset", "group"]):
            gain3 = (d["afo"] - d["naive"]).to_numpy()
            gain1 = (d["s1"] - d["naive"]).to_numpy()
            share = gain3[gain1 > 0] / gain1[gain1 > 0]
            g = mean_ci(gain3)
            s = mean_ci(share)
            rows.append({"conv_width": int(width), "dataset": dataset, "group": group, "n_seeds": g["n_seeds"],
                         "afo_minus_naivemix": g["mean"], "ci_low": g["ci_low"], "ci_high": g["ci_high"], "p": g["p"],
                         "s1_gain": gain1.mean(), "share_kept": s["mean"], "share_ci_low": s["ci_low"],
                         "share_ci_high": s["ci_high"], "seeds_no_s1_gain": int((gain1 <= 0).sum())})  # fmt: skip
    sweep = pd.DataFrame(rows)
    if not sweep.empty:
        sweep.insert(sweep.columns.get_loc("p") + 1, "p_holm", holm(sweep["p"]))
    return sweep


def markdown_table(cells: pd.DataFrame, rows: list[tuple[str, str]], columns: list[tuple[str, str]]) -> str:
    """mean +- sd (ddof=1) over seeds; rows (label, model), columns (dataset, group)."""
    stats = cells.groupby(["model", "dataset", "group"])["r"].agg(["mean", "std", "count"])
    head = "| model | " + " | ".join(f"{d} {g}" for d, g in columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for label, model in rows:
        if model not in stats.index.get_level_values(0):
            continue
        vals = []
        for d, g in columns:
            if (model, d, g) in stats.index:
                m, s, n = stats.loc[(model, d, g)]
                vals.append(f"{m:.3f} ± {s:.3f} (n={int(n)})" if n > 1 else f"{m:.3f} (n=1)")
            else:
                vals.append("")
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _ci(mean: float, low: float, high: float) -> str:
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]" if np.isfinite(low) else f"{mean:+.4f} [n/a]"


def _formatted(frame: pd.DataFrame, formats: dict[str, str]) -> pd.DataFrame:
    """A copy with the given columns as text (format spec per column), for to_markdown."""
    out = frame.copy()
    for column, spec in formats.items():
        out[column] = [format(v, spec) for v in out[column]]
    return out


def report(args: argparse.Namespace) -> None:
    results = Path(args.results)
    units, table = read_units(results, args.choose_seeds)
    if units.empty:
        raise SystemExit(f"no finished units under {results} (benchmarks/recipe.py run writes them)")
    main = table[table.variant.isin(MAIN_VARIANTS)] if not table.empty else table
    if not main.empty:
        main = pd.concat([main, validation_selection(main)], ignore_index=True)
    cells = seed_cells(main)
    used = units[units.use]
    report_seeds = sorted(used.seed.unique().tolist())
    print(f"Raw outputs: {results} ({len(units)} units, {len(used)} used).")
    print(f"Seeds used to choose settings (never reported): {sorted(args.choose_seeds)}; report seeds: {report_seeds}.")
    print("sd: sample standard deviation over seeds (ddof=1); n = seeds. CI: 95%, t distribution with n - 1 df.\n")
    left = units[~units.use]
    if not left.empty:
        print("Units left out of every table\n")
        print(left[["variant", "seed", "left_out"]].to_markdown(index=False))
        print()
    print("Units used (wall seconds of the unit's run)\n")
    print(used[["variant", "seed", "conv_width", "jobs", "wall_seconds"]].to_markdown(index=False))
    print()
    tests = seed_tests(cells) if not cells.empty else pd.DataFrame()
    if not cells.empty:
        datasets = sorted(cells.dataset.unique())
        columns = []
        for d in datasets:
            groups = [g for g in ("early", "mid", "late") if ((cells.dataset == d) & (cells.group == g)).any()]
            columns += [(d, "all")] + [(d, g) for g in groups]
        blocks = [("all voxels of each dataset", [c for c in columns if c[1] == "all"])]
        for kind, names in (("fMRI", ("nsd", "hcp")), ("EEG/MEG", ("eeg", "meg"))):
            sub = [c for c in columns if c[1] != "all" and c[0] in names]
            if sub:
                blocks.append((f"{kind} by early/mid/late group", sub))
        others = [c for c in columns if c[1] != "all" and c[0] not in ("nsd", "hcp", "eeg", "meg")]
        if others:
            blocks.append(("other datasets by group", others))
        for title, rows in (("Table 3 (recipe)", TABLE3), ("Table 2 (TopyNeck)", TABLE2)):
            for what, cols in blocks:
                print(f"{title}, {what}: mean test r, mean ± sd over seeds (n = seeds with that model)\n")
                print(markdown_table(cells, rows, cols))
                print()
    if not tests.empty:
        m = int(np.isfinite(tests["p"]).sum())
        print(
            "Seed-level tests: a - b per seed (difference of the dataset's or group's mean test r), mean [95% CI], "
            f"paired t-test across seeds; {m} comparisons (pairs x datasets x groups with 2+ seeds), p_holm = "
            "Holm-adjusted over all of them\n"
        )
        t = _formatted(tests, {"p": ".2g", "p_holm": ".2g"})
        t["a - b [95% CI]"] = [_ci(*v) for v in zip(tests["mean"], tests["ci_low"], tests["ci_high"])]
        shown = ["a", "b", "dataset", "group", "n_seeds", "a - b [95% CI]", "p", "p_holm", "seeds_a_better"]
        print(t[shown].to_markdown(index=False, disable_numparse=True))
        print()
    described = voxel_wilcoxon(main) if not main.empty else pd.DataFrame()
    if not described.empty:
        print(
            "Description only, not a test (voxels of one brain are not independent; the seed-level tests above are "
            "the tests): per-voxel differences, every report seed's voxels pooled, Wilcoxon signed-rank p\n"
        )
        formats = {"mean_diff": "+.4f", "median_diff": "+.4f", "frac_a_better": ".2f", "p_wilcoxon_voxels": ".2g"}
        print(_formatted(described, formats).to_markdown(index=False, disable_numparse=True))
        print()
    sweep_variants = ["base", *(v for v in VARIANTS if v.startswith("width"))]  # base: the config's conv width
    sweep = capacity_sweep(table[table.variant.isin(sweep_variants)]) if not table.empty else pd.DataFrame()
    if not sweep.empty:
        m = int(np.isfinite(sweep["p"]).sum())
        print(
            "Capacity sweep: afo - naivemix per seed, mean [95% CI], t-test across seeds "
            f"({m} comparisons: widths x datasets x groups with 2+ seeds, p_holm over them; --groups shows the "
            "groups); share of stage 1's gain over naivemix that stage 3 keeps, "
            "(afo - naivemix) / (S1 - naivemix) per seed with an S1 gain, mean [95% CI]\n"
        )
        s = sweep[sweep.group == "all"].copy() if not args.groups else sweep.copy()
        s["afo - naivemix [95% CI]"] = [_ci(*v) for v in zip(s["afo_minus_naivemix"], s["ci_low"], s["ci_high"])]
        s["share kept [95% CI]"] = [
            f"{m_:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else (f"{m_:.2f} [n/a]" if np.isfinite(m_) else "n/a")
            for m_, lo, hi in zip(s["share_kept"], s["share_ci_low"], s["share_ci_high"])
        ]
        s = _formatted(s, {"p": ".2g", "p_holm": ".2g", "s1_gain": "+.4f"})
        shown = ["conv_width", "dataset", "group", "n_seeds", "afo - naivemix [95% CI]", "p", "p_holm", "s1_gain"]
        print(s[[*shown, "share kept [95% CI]", "seeds_no_s1_gain"]].to_markdown(index=False, disable_numparse=True))
        print()
    probes = investigation_summary(investigations(results, args.choose_seeds))
    if not probes.empty:
        print(
            "Investigation variants (run --tag) against the base unit of the same seed: difference of the dataset's "
            "mean test r (variant - base) per model; on the choose seeds as they were, over the report seeds as "
            "mean [95% CI], paired t-test (not Holm-adjusted: each investigation is its own question)\n"
        )
        t = probes.copy()
        t["report: diff [95% CI]"] = [
            _ci(*v) if n else "n/a" for *v, n in zip(t["mean"], t["ci_low"], t["ci_high"], t["n_report_seeds"])
        ]
        t = _formatted(t, {"p": ".2g"})
        shown = ["variant", "sets", "model", "dataset", "choose_seeds", "n_report_seeds", "report: diff [95% CI]", "p"]
        print(t[[*shown, "seeds_better"]].to_markdown(index=False, disable_numparse=True))
        print()
    check = convergence_check(results)
    if not check.empty:
        print(
            f"Convergence check of config/hetero.yaml (base2x: twice the epochs and patience): converged = best "
            f"validation r up by less than {CONVERGED_WITHIN}; {int(check.converged.sum())} of {len(check)} jobs\n"
        )
        formats = {"val_r": ".4f", "val_r_2x": ".4f", "gain_2x": "+.4f"}
        print(_formatted(check, formats).to_markdown(index=False, disable_numparse=True))
        print()
    if args.csv:
        out = Path(args.csv)
        out.mkdir(parents=True, exist_ok=True)
        units.to_csv(out / "units.csv", index=False)
        cells.to_csv(out / "cells.csv", index=False)
        tests.to_csv(out / "tests.csv", index=False)
        described.to_csv(out / "voxel_description.csv", index=False)
        sweep.to_csv(out / "sweep.csv", index=False)
        check.to_csv(out / "convergence_check.csv", index=False)
        probes.to_csv(out / "investigations.csv", index=False)


def compare(args: argparse.Namespace) -> None:
    """Variants against the base run, per seed, from the work folders: mean test r per dataset (and group) of
    the chosen models (for choosing settings on the choice seeds; the tables come from ``report``)."""
    rows = []
    for tag in args.tags:
        root = Path(args.out) / tag if tag != "base" else Path(args.out)
        for seed in args.seeds:
            work = root / f"seed{seed}"
            if not any((work / "results" / "encoding").glob("*/voxels.csv")):
                continue
            cells = cell_means(load_seed(work))
            for model in args.models:
                c = cells[cells.model == model]
                if c.empty:
                    continue
                row = {"variant": tag, "seed": seed, "model": model}
                row.update({f"{d} {g}": r for d, g, r in zip(c.dataset, c.group, c.r)})
                rows.append(row)
    table = pd.DataFrame(rows)
    keep = ["variant", "seed", "model"] + [
        c for c in table.columns if c.endswith(" all") or c.startswith(tuple(args.detail))
    ]
    print(table[keep].to_markdown(index=False, floatfmt=".3f"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    results = str(ROOT / "benchmarks" / "results" / "recipe")
    r = sub.add_parser("run", help="run the units (variant x seed) not done yet, writing each one's raw output")
    r.add_argument("--config", default=str(ROOT / "config" / "hetero.yaml"))
    r.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "recipe"), help="work folders (not committed)")
    r.add_argument("--results", default=results, help="raw outputs, <results>/<variant>/seed<N> (committed)")
    r.add_argument("--variants", nargs="+", default=["base"], help=f"of {sorted(VARIANTS)}")
    r.add_argument("--seeds", type=int, nargs="+", default=REPORT_SEEDS)
    r.add_argument("--choose-seeds", type=int, nargs="*", default=CHOOSE_SEEDS, help="recorded as role 'choose'")
    r.add_argument("--dry-run", action="store_true", help="print the plan (done units, estimated minutes) only")
    r.add_argument("--cores", type=int, default=2)
    r.add_argument("--nolock", action="store_true", help="run beside another run of the same seed (distinct models)")
    r.add_argument("--tag", default="", help="a custom variant (with --models, --set, --reuse-from)")
    r.add_argument("--models", nargs="+", help="the custom variant's models")
    r.add_argument("--s2-plus-one", action="store_true", help="custom variant: also S2+1 (afo = S3 after it)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="custom variant: config change")
    r.add_argument("--reuse-from", action="store_true", help="custom variant: hard-link the base run's outputs")
    r.add_argument(
        "--reuse",
        nargs="+",
        default=["data", "stage0", "rois", "stage1"],
        choices=sorted(REUSABLE),
        help="which of the base run's outputs a custom variant reuses (with --reuse-from)",
    )
    p = sub.add_parser("report", help="tables and seed-level tests from the committed raw outputs")
    p.add_argument("--results", default=results)
    p.add_argument("--choose-seeds", type=int, nargs="*", default=CHOOSE_SEEDS, help="seeds never reported")
    p.add_argument("--groups", action="store_true", help="the capacity sweep per early/mid/late group too")
    p.add_argument("--csv", metavar="DIR", help="also write units, cells, tests, voxel_description, sweep CSVs")
    c = sub.add_parser("compare", help="variants (tags) against the base run, per seed, from the work folders")
    c.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "recipe"))
    c.add_argument("--tags", nargs="+", default=["base"], help="'base' = the runs directly under --out")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    c.add_argument("--models", nargs="+", default=["naivemix", "stage1", "stage2", "afo"])
    c.add_argument("--detail", nargs="*", default=["nsd"], help="datasets shown per group, not only 'all'")
    w = sub.add_parser("recollect", help="rewrite done units' voxels.csv from their work folders (new columns)")
    w.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "recipe"))
    w.add_argument("--results", default=results)
    w.add_argument("--variants", nargs="+", default=MAIN_VARIANTS, help=f"of {sorted(VARIANTS)}")
    w.add_argument("--seeds", type=int, nargs="+", default=REPORT_SEEDS)
    w.set_defaults(tag="")  # plan() reads it: recollect rewrites the named variants only
    args = parser.parse_args(argv)
    {"run": run, "report": report, "compare": compare, "recollect": recollect}[args.command](args)


if __name__ == "__main__":
    main()
