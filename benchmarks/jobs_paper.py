"""The paper recipe's job list and its work, for the GPU benchmark's projection (benchmarks/gpu.sh).

Runs on the CPU side (it needs snakemake): a dry run of the workflow on a config (default config/paper.yaml)
gives the number of jobs of each rule, exactly as `snakemake -n` would plan them; the dataset sizes below give
each job's work:

- every training job (stage 0, ablations, stage 1, stage 2, noDK, stage 3) draws from the pooled training
  trials of all training subjects (per-ROI jobs read fewer voxels, not fewer trials); early stopping decides how
  long a job runs, so its length is measured, not assumed: ``--convergence`` names a report of
  benchmarks/convergence.py, whose ``passes`` column (passes over the training trials until early stopping ended
  the job, the largest over that report's seeds) for the config's training settings (``--variant``) gives
  ceil(passes x trials / batch_size) steps per job. Stage-0, stage-1, stage-3 and ablation jobs take the
  measured stage-0 length, stage-2 and noDK jobs the measured stage-2 length (a stage-2 job with helpers). How
  many passes a job needs at the paper's data sizes is not known before it runs there; the synthetic brain's
  count is the measured stand-in (the GPU side also reports the hours per epoch to rescale). ``--epochs N``
  assumes N epochs per job instead;
- a features job runs the backbone over every image of its dataset;
- a prediction or dark-knowledge job runs the model forward over the images of its dataset(s) it predicts
  (prediction: val + test images; dark knowledge: train + val images).

Dataset sizes: the afo stores of config/paper.yaml cannot be opened here (no data), so the sizes are estimated
from each dataset's published design (docs/datasets.md; Table 1 of the paper), for the options paper.yaml uses
(NSD: all sessions; HCP: group average per movie version; ALG, MEG, EEG: one "big brain" per dataset).
Replace them with counts of your stores (``afo check-data CONFIG`` prints trials and images per subject) in a
JSON file given with ``--sizes``. The output (benchmarks/results/jobs_paper.json) is committed so that the GPU machine,
which has no snakemake, reads it.

    python benchmarks/jobs_paper.py                       # writes benchmarks/results/jobs_paper.json
    python benchmarks/jobs_paper.py --config my.yaml --sizes my_sizes.json --out my_jobs.json
    python benchmarks/jobs_paper.py --epochs 60           # an assumed length instead of the measured one
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from afo.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

# Per dataset: training trials, val images, test images, all images (unique), with where the estimate comes from.
# val = 6% of the non-test images (prepare's default val_fraction); trials are single presentations.
PAPER_SIZES = {
    "nsd": {
        "train_trials": 180_200,
        "val_images": 4_300,
        "test_images": 1_000,
        "images": 73_000,
        "source": "8 subjects, 750 trials x 284 sessions = 213,000 trials; ~21,300 of them on the shared1000 test "
        "images (3 repeats, fewer for subjects with fewer sessions); 6% of the rest is val; 73,000 images",
    },
    "hcp": {
        "train_trials": 6_240,
        "val_images": 400,
        "test_images": 670,
        "images": 7_310,
        "source": "group average per movie version (2 groups) x 3,655 TRs of the 4 runs = 7,310 frames at 1 fps; "
        "the test-retest clip (~84 s per run) is the test set; 6% of the rest is val",
    },
    "alg": {
        "train_trials": 2_820,
        "val_images": 60,
        "test_images": 102,
        "images": 1_102,
        "source": "one big brain of 10 subjects; 1,000 training videos x 3 repeats, one frame each; 102 test videos",
    },
    "meg": {
        "train_trials": 20_900,
        "val_images": 1_335,
        "test_images": 200,
        "images": 22_448,
        "source": "one big brain of 4 subjects; 22,248 images seen once, 200 test images x 12 repeats",
    },
    "eeg": {
        "train_trials": 62_190,
        "val_images": 990,
        "test_images": 200,
        "images": 16_740,
        "source": "one big brain of 10 subjects; 16,540 training images x 4 repeats, 200 test images x 80 repeats",
    },
    "bold5000": {
        "train_trials": 0,
        "val_images": 0,
        "test_images": 0,
        "images": 5_254,
        "source": "holdout (features and probing only): 5,254 images",
    },
    "things_fmri": {
        "train_trials": 0,
        "val_images": 0,
        "test_images": 0,
        "images": 8_740,
        "source": "holdout (features and probing only): 8,740 images",
    },
}

TRAIN_RULES = ("train_stage0", "train_ablation", "train_stage1", "train_stage2", "train_nodk", "train_stage3")
# Which measured job (benchmarks/convergence.py's stages) stands in for each training rule's length.
MEASURED_AS = {"train_stage0": "stage0", "train_ablation": "stage0", "train_stage1": "stage0", "train_stage3": "stage0",
               "train_stage2": "stage2", "train_nodk": "stage2"}  # fmt: skip
CONVERGENCE = ROOT / "benchmarks/results/convergence.csv"
# config/paper.yaml keeps the paper's constant AdaBelief rate: the reference variant measures that optimiser.
DEFAULT_VARIANT = "ref"


def measured_passes(path: Path, variant: str) -> dict[str, float]:
    """Passes over the training trials until early stopping, per measured stage: the largest over the seeds of
    ``variant`` in a benchmarks/convergence.py report."""
    import pandas as pd

    table = pd.read_csv(path)
    rows = table[table["variant"] == variant]
    if rows.empty or set(rows["stage"]) != {"stage0", "stage2"}:
        raise SystemExit(f"{path}: no stage0 and stage2 rows of variant {variant!r}; run benchmarks/convergence.py")
    return {stage: float(g["passes"].max()) for stage, g in rows.groupby("stage")}


def planned_jobs(config: Path) -> dict[str, int]:
    """Jobs per rule of ``snakemake -n`` on ``config`` (run in an empty folder, so nothing counts as done)."""
    with tempfile.TemporaryDirectory() as work:
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            work,
            "--configfile",
            str(config.resolve()),
            "--cores",
            "1",
            "-n",
            "--quiet",
            "rules",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    jobs = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    if not jobs:
        raise SystemExit(f"snakemake -n planned no job for {config}:\n{out}")
    return jobs


def job_list(config_path: Path, sizes: dict, passes: dict[str, float] | None, epochs: int | None, source: str) -> dict:
    """The recipe's work: per rule, jobs and steps / images, from the dry run and the sizes; a training job's length
    from the measured ``passes`` per stage (or ``epochs`` assumed)."""
    config = yaml.safe_load(config_path.read_text())
    train = config["train"]
    train_sets = sorted(n for n, d in config["datasets"].items() if d.get("role", "train") == "train")
    all_sets = sorted(config["datasets"])
    missing = sorted(set(all_sets) - set(sizes))
    if missing:
        raise SystemExit(f"no sizes for dataset(s) {missing}: give them with --sizes")
    trials = sum(sizes[d]["train_trials"] for d in train_sets)
    steps_per_epoch = max(1, math.ceil(float(train["epoch_fraction"]) * trials / int(train["batch_size"])))
    jobs = planned_jobs(config_path)
    predicted_images = sum(sizes[d]["val_images"] + sizes[d]["test_images"] for d in train_sets)
    dk_images = sum(sizes[d]["images"] - sizes[d]["test_images"] for d in train_sets)
    rules = {}
    for rule, n in sorted(jobs.items()):
        if rule in TRAIN_RULES:
            if passes is not None:
                steps = math.ceil(passes[MEASURED_AS[rule]] * trials / int(train["batch_size"]))
            else:
                steps = steps_per_epoch * int(epochs or 0)
            rules[rule] = {"jobs": n, "kind": "train", "steps_per_job": steps}
        elif rule == "features":
            # One job per dataset: together they pass every image of every dataset through the backbone once.
            rules[rule] = {"jobs": n, "kind": "backbone", "images_total": sum(sizes[d]["images"] for d in all_sets)}
        elif rule == "predict":
            rules[rule] = {"jobs": n, "kind": "forward", "images_per_job": predicted_images}
        elif rule == "dark_knowledge":
            rules[rule] = {"jobs": n, "kind": "forward", "images_per_job": dk_images}
    return {
        "config": str(config_path.relative_to(ROOT) if config_path.resolve().is_relative_to(ROOT) else config_path),
        "batch_size": int(train["batch_size"]),
        "max_voxels": int(train["max_voxels"]),
        "train_datasets": train_sets,
        "train_trials": trials,
        "steps_per_epoch": steps_per_epoch,
        "job_length": source,
        "passes_per_job": passes,
        "epochs_assumed": epochs,
        "rules": rules,
        "jobs_by_rule": jobs,
        "sizes": sizes,
        "paper_gpu_hours": 300,
        "paper_gpu": "NVIDIA RTX 2080 Ti 12GB at 1140 MHz, fp16 mixed precision (paper, section 4.6)",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "config/paper.yaml")
    p.add_argument("--sizes", type=Path, help="JSON: dataset -> {train_trials, val_images, test_images, images}")
    p.add_argument("--convergence", type=Path, default=CONVERGENCE, help="a benchmarks/convergence.py report (CSV)")
    p.add_argument("--variant", default=DEFAULT_VARIANT, help="its variant with the config's training settings")
    p.add_argument("--epochs", type=int, help="assume this many epochs per training job instead of the measured length")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/jobs_paper.json")
    a = p.parse_args(argv)
    sizes = json.loads(a.sizes.read_text()) if a.sizes else PAPER_SIZES
    if a.epochs:
        passes, source = None, f"assumed: {a.epochs} epochs per training job"
    else:
        passes = measured_passes(a.convergence, a.variant)
        shown = a.convergence.relative_to(ROOT) if a.convergence.resolve().is_relative_to(ROOT) else a.convergence
        source = (
            f"measured: passes over the training trials until early stopping, variant {a.variant!r} of {shown} "
            "(benchmarks/convergence.py, a synthetic brain); stage-0/1/3 and ablation jobs as its stage0, "
            "stage-2 and noDK jobs as its stage2"
        )
    result = job_list(a.config, sizes, passes, a.epochs, source)
    atomic_write_text(a.out, json.dumps(result, indent=2) + "\n")
    train_jobs = sum(r["jobs"] for r in result["rules"].values() if r["kind"] == "train")
    steps = sum(r["jobs"] * r["steps_per_job"] for r in result["rules"].values() if r["kind"] == "train")
    print(f"{a.out}: {train_jobs} training jobs, {steps:,} steps in all ({source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
