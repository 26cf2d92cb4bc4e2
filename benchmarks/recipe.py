"""The paper's Tables 2 and 3 on the heterogeneous synthetic experiment (config/hetero.yaml), over seeds.

For every seed the real workflow runs (snakemake, this repository's Snakefile) in its own directory
``<out>/seed<N>`` with a generated config: config/hetero.yaml (or --config) with ``simulate.seed`` and
``train.seed`` set to N, so each seed is a different synthetic brain AND a different initialisation. Only the
encoding tables are asked for (``results/encoding/<model>/voxels.csv``), not figures, probing or decoding.

Then, from the voxels.csv of every model and seed:

- Table 3 (recipe): naivemix, S1 (stage1), S2 (stage2), S2+1 and S3 after it (from the variant run ``s2plus``,
  see EXTRAS), afo (= S3), NoDK, randROI S1/S2/S3; Table 2 (TopyNeck): FullTopyNeck (= naivemix: the all-ROI stage-0 model), FrozenRM, FrozenLS, NoRegLS
  (lambda_entropy 0), NoRegLS-hard (one layer per voxel), w/o GlobalPool. Each cell: mean test r over the
  dataset's (or its early/mid/late group's) voxels, then mean +- sd over seeds.
- Paired tests across voxels (Wilcoxon signed-rank on per-voxel test r, every seed's voxels pooled, and per
  seed): afo vs naivemix, S2 vs S1, S2+1 vs S2, randROI S2 vs randROI S1, NoDK vs S1 and vs S2.

Usage::

    python benchmarks/recipe.py run --out benchmarks/out/recipe --seeds 0 1 2 [--set train.max_epochs=20 ...]
    python benchmarks/recipe.py report --out benchmarks/out/recipe            # Markdown tables on stdout

``--set key.sub=value`` (YAML value) changes the generated config, e.g. ``afo.veroi.n_rois=6`` for the
investigation; ``--tag`` names the variant's directory (``<out>/<tag>/seed<N>``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Table rows: (label, results/encoding/<name>) in the paper's order.
TABLE3 = [("NaiveMix", "naivemix"), ("S1", "stage1"), ("S2", "stage2"), ("S2+1", "stage2plus"), ("afo (S3)", "afo"),
          ("S3 after S2+1", "afo_s2plus"), ("NoDK", "nodk"), ("randROI S1", "randroi_stage1"), ("randROI S2", "randroi_stage2"),
          ("randROI S3", "randroi")]  # fmt: skip
TABLE2 = [("FullTopyNeck", "naivemix"), ("FrozenRM", "frozenrm"), ("FrozenLS", "frozenls"), ("NoRegLS (lambda 0)", "noregls"),
          ("NoRegLS (hard)", "hardls"), ("w/o GlobalPool", "noglobalpool")]  # fmt: skip
PAIRS = [
    ("afo", "naivemix"),
    ("stage2", "stage1"),
    ("stage2plus", "stage2"),
    ("randroi_stage2", "randroi_stage1"),
    ("nodk", "stage1"),
    ("nodk", "stage2"),
]
# Models a variant run adds to the base tables: (tag, model there, name here). S2+1 runs as the variant `s2plus`
# (--s2-plus-one, reusing the base run's stages 0-2), where `stage2` is S2+1 and `afo` is S3 distilled from it.
EXTRAS = [("s2plus", "stage2", "stage2plus"), ("s2plus", "afo", "afo_s2plus")]


def _set(config: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    node = config
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(value)


def seed_config(base: dict, seed: int, sets: list[str], s2_plus_one: bool) -> dict:
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


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` under ``dst`` (same mtimes, so snakemake sees them up to date), skipping
    training work folders (a job that finds one resumes from it)."""
    for path in src.rglob("*"):
        if path.is_file() and "work" not in path.relative_to(src).parts:
            target = dst / path.relative_to(src)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)


def run(args: argparse.Namespace) -> None:
    base = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.out) / args.tag if args.tag else Path(args.out)
    stale = {"rois", "stage1", "stage2"} & set(args.reuse)
    if args.reuse_from and stale and any(a.startswith("afo.veroi.") for a in args.set):
        raise SystemExit(
            f"--set afo.veroi.* makes new veROIs: the base run's {sorted(stale)} would be stale; "
            "reuse only data and stage0 (--reuse data stage0)"
        )
    for seed in args.seeds:
        work = (out / f"seed{seed}").resolve()
        work.mkdir(parents=True, exist_ok=True)
        config = seed_config(base, seed, args.set, args.s2_plus_one)
        (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        if args.reuse_from:
            source = Path(args.out).resolve() / f"seed{seed}"
            for level in args.reuse:
                for rel in REUSABLE[level]:
                    if (source / rel).exists():
                        link_tree(source / rel, work / rel)
        names = args.models or model_names(config)
        targets = [f"results/encoding/{n}/voxels.csv" for n in names]
        cmd = [sys.executable, "-m", "snakemake", *targets, "-s", str(ROOT / "Snakefile"), "-d", str(work), "--configfile",
               str(work / "config.yaml"), "--cores", str(args.cores), "--rerun-incomplete"] + (["--nolock"] if args.nolock else [])  # fmt: skip
        start = time.time()
        print(f"[recipe] seed {seed}: {' '.join(cmd)}", flush=True)
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        subprocess.run(cmd, check=True, env=env)
        seconds = time.time() - start
        with open(work / "wall_seconds.txt", "a") as f:  # one line per call: seconds, then the models asked for
            f.write(f"{seconds:.0f} {' '.join(names)}\n")
        print(f"[recipe] seed {seed}: done in {seconds:.0f} s", flush=True)


# -- report ---------------------------------------------------------------------------------------------


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
    """Long table: model, dataset, subject, voxel, area, group, r_test of one seed's models."""
    from afo.io.tables import read_voxels

    config = yaml.safe_load((work / "config.yaml").read_text())
    groups = _group_of(config)
    truth = _truth_areas(work)
    frames = []
    for voxels in sorted((work / "results" / "encoding").glob("*/voxels.csv")):
        v = read_voxels(voxels)[["dataset", "subject", "voxel", "r_test"]]
        frames.append(v.assign(model=voxels.parent.name))
    table = pd.concat(frames, ignore_index=True)
    table["subject"] = table["subject"].astype(str)
    table = table.merge(truth, on=["dataset", "subject", "voxel"], how="left")
    table["group"] = table["area"].map(groups)
    return table


def cell_means(table: pd.DataFrame) -> pd.DataFrame:
    """Mean test r per model and (dataset, group), with 'all' per dataset: columns model, dataset, group, r."""
    rows = []
    finite = table[np.isfinite(table["r_test"])]
    for (model, dataset), d in finite.groupby(["model", "dataset"]):
        rows.append({"model": model, "dataset": dataset, "group": "all", "r": d["r_test"].mean()})
        for group, g in d.groupby("group"):
            rows.append({"model": model, "dataset": dataset, "group": group, "r": g["r_test"].mean()})
    return pd.DataFrame(rows)


def paired_tests(table: pd.DataFrame, pairs=PAIRS) -> pd.DataFrame:
    """Wilcoxon signed-rank tests of per-voxel test r, model a vs model b, per dataset: every seed's voxels
    pooled (seed, subject, voxel are the pairs), plus how many seeds have a > b in mean."""
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
            per_seed = diff.groupby(level="seed").mean()
            rows.append({"a": a, "b": b, "dataset": dataset, "n_voxels": len(d), "mean_diff": diff.mean(),
                         "median_diff": diff.median(), "frac_a_better": (diff > 0).mean(),
                         "p_wilcoxon": test.pvalue if test is not None else np.nan,
                         "seeds_a_better": f"{int((per_seed > 0).sum())}/{len(per_seed)}"})  # fmt: skip
    return pd.DataFrame(rows)


def markdown_table(cells: pd.DataFrame, rows: list[tuple[str, str]], columns: list[tuple[str, str]]) -> str:
    """mean +- sd over seeds; rows (label, model), columns (dataset, group)."""
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


def report(args: argparse.Namespace) -> None:
    out = Path(args.out) / args.tag if args.tag else Path(args.out)
    seeds = sorted(e for e in out.glob("seed*/results/encoding") if any(e.glob("*/voxels.csv")))
    frames = []
    walls = {}
    for enc in seeds:
        work = enc.parents[1]
        seed = int(work.name.removeprefix("seed"))
        frames.append(load_seed(work).assign(seed=seed))
        variants: dict[str, pd.DataFrame] = {}  # each variant's runs of this seed, read once
        for tag, model, name in EXTRAS if not args.tag else ():
            extra = out / tag / work.name
            if (extra / "results" / "encoding" / model / "voxels.csv").is_file():
                if tag not in variants:
                    variants[tag] = load_seed(extra)
                t = variants[tag]
                frames.append(t[t.model == model].assign(model=name, seed=seed))
        wall = work / "wall_seconds.txt"
        walls[seed] = (
            sum(int(line.split()[0]) for line in wall.read_text().splitlines() if line.strip())
            if wall.is_file()
            else None
        )
    table = pd.concat(frames, ignore_index=True)
    table.loc[table.model == "stage2_once", "model"] = "stage2once"
    cells = pd.concat([cell_means(t).assign(seed=s) for s, t in table.groupby("seed")], ignore_index=True)
    datasets = sorted(cells.dataset.unique())
    columns = []
    for d in datasets:
        groups = [g for g in ("early", "mid", "late") if ((cells.dataset == d) & (cells.group == g)).any()]
        columns += [(d, "all")] + [(d, g) for g in groups]
    tests = paired_tests(table)
    print(
        f"Seeds: {sorted(walls)}; wall seconds per seed (all calls of `run`): {walls}; machine: {platform.node()} ({os.cpu_count()} CPUs)\n"
    )
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
    print("\nPaired tests across voxels (Wilcoxon signed-rank, all seeds' voxels pooled)\n")
    if not tests.empty:
        t = tests.copy()
        for c in ("mean_diff", "median_diff"):
            t[c] = t[c].map(lambda v: f"{v:+.4f}")
        t["frac_a_better"] = t["frac_a_better"].map(lambda v: f"{v:.2f}")
        t["p_wilcoxon"] = t["p_wilcoxon"].map(lambda v: f"{v:.2g}")
        print(t.to_markdown(index=False))
    if args.csv:
        cells.to_csv(out / "cells.csv", index=False)
        tests.to_csv(out / "tests.csv", index=False)


def compare(args: argparse.Namespace) -> None:
    """Variants against the base run, per seed: mean test r per dataset (and group) of the chosen models."""
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
    r = sub.add_parser("run", help="run the workflow for each seed")
    r.add_argument("--config", default=str(ROOT / "config" / "hetero.yaml"))
    r.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "recipe"))
    r.add_argument("--tag", default="", help="variant name: runs go to <out>/<tag>/seed<N>")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--cores", type=int, default=2)
    r.add_argument("--s2-plus-one", action="store_true", help="also S2+1 (then afo = S3 distilled from S2+1)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change the generated config")
    r.add_argument("--nolock", action="store_true", help="run beside another run of the same seed (distinct models)")
    r.add_argument("--models", nargs="+", help="evaluate only these models (default: every model of the config)")
    r.add_argument("--reuse-from", action="store_true", help="hard-link the base run's (<out>/seed<N>) outputs first")
    r.add_argument(
        "--reuse",
        nargs="+",
        default=["data", "stage0", "rois", "stage1"],
        choices=sorted(REUSABLE),
        help="which of the base run's outputs a variant reuses (with --reuse-from)",
    )
    p = sub.add_parser("report", help="tables and tests from finished runs")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "recipe"))
    p.add_argument("--tag", default="")
    p.add_argument("--csv", action="store_true", help="also write cells.csv and tests.csv beside the runs")
    c = sub.add_parser("compare", help="variants (tags) against the base run, per seed")
    c.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "recipe"))
    c.add_argument("--tags", nargs="+", default=["base"], help="'base' = the runs directly under --out")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    c.add_argument("--models", nargs="+", default=["naivemix", "stage1", "stage2", "afo"])
    c.add_argument("--detail", nargs="*", default=["nsd"], help="datasets shown per group, not only 'all'")
    args = parser.parse_args(argv)
    {"run": run, "report": report, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
