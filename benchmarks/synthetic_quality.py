"""Does the encoding model recover what the synthetic brain was built with?

Simulates the default synthetic brain, prepares it, caches the demo backbone's features, trains the full
model and the FrozenRM ablation on the fMRI subjects, and reports, from the test set and the simulator's
ground truth:

- RetinaMapper: Pearson r of the learned u against the true RF centre, per axis, early areas (V1-V3);
- LayerSelector: mean selected layer (sum_l l * eta_l) of high-level (LO) vs early voxels;
- encoding: mean test r of early voxels relative to the noise ceiling (r / sqrt(NC / 100));
- the full model vs FrozenRM on early voxels (paper Table 2).

Usage:  python benchmarks/synthetic_quality.py --out benchmarks/out/quality [--epochs 60] [--seed 0]
Prints a JSON report and a Markdown table to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from afo.config import load_config
from afo.data.folder import prepare
from afo.evaluation.scores import voxel_table
from afo.features import BackboneSpec, extract_features
from afo.metrics import pearson_r
from afo.simulate import SimulationConfig, simulate
from afo.training.fit import TrainSpec, fit
from afo.training.predict import predict_file

EARLY = ("V1", "V2", "V3")
TARGETS = {"u_r_min": 0.9, "early_r_over_ceiling": 0.8}


def quality(voxels: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """Quality numbers of one model's voxels.csv against the simulator's ground truth (fMRI subjects)."""
    v = voxels.merge(truth, on=["subject", "voxel"], how="inner")
    early = v[v["area"].isin(EARLY)].dropna(subset=["r_test", "u_x"])
    late = v[v["area"] == "LO"]
    eta_cols = sorted((c for c in v if c.startswith("eta_")), key=lambda c: int(c.split("_")[1]))
    depth = lambda df: float((df[eta_cols].to_numpy() * np.arange(len(eta_cols))).sum(1).mean())  # noqa: E731
    ceiling = np.sqrt(early["nc"].clip(lower=0) / 100.0)
    known = ceiling > 0.1  # per-voxel ratios explode where the ceiling is near 0
    return {
        "u_r_x": float(pearson_r(early["u_x"].to_numpy(), early["true_u_x"].to_numpy())),
        "u_r_y": float(pearson_r(early["u_y"].to_numpy(), early["true_u_y"].to_numpy())),
        "mean_layer_early": depth(early),
        "mean_layer_late": depth(late),
        "early_mean_r": float(early["r_test"].mean()),
        # The target: mean test r of early voxels over their mean noise ceiling (as r, sqrt(NC/100)).
        "early_r_over_ceiling": float(early["r_test"].mean() / ceiling.mean()),
        "early_median_voxel_ratio": float((early["r_test"][known] / ceiling[known]).median()),
        "n_early": int(len(early)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/quality"))
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="model/train/backbone settings")
    parser.add_argument("--epochs", type=int, default=60, help="max epochs of each model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--simulate", type=json.loads, default={}, help="JSON SimulationConfig overrides")
    args = parser.parse_args()
    cfg = load_config(args.config)
    out = args.out
    started = time.time()

    sim = out / "synthetic"
    if not (sim / "simulation.yaml").exists():
        simulate(sim, SimulationConfig.from_dict({**args.simulate, "seed": args.seed}))
    store, feats = out / "prepared.h5", out / "features.h5"
    if not store.exists():
        prepare(sim / "fmri", store, image_size=cfg["prepare"]["image_size"])
    if not feats.exists():
        torch.manual_seed(args.seed)
        extract_features(store, feats, BackboneSpec.from_config(cfg["backbone"]))

    truth = pd.concat(
        [pd.read_csv(p).assign(subject=p.parent.name) for p in sorted((sim / "fmri").glob("*/ground_truth.csv"))]
    ).rename(columns={"u_x": "true_u_x", "u_y": "true_u_y"})[["subject", "voxel", "area", "true_u_x", "true_u_y"]]
    train = {**cfg["train"], "max_epochs": args.epochs, "seed": args.seed}
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "epochs": args.epochs,
        "models": {},
    }
    for name, overrides in (("full", {}), ("frozenrm", {"retina_mapper": "frozen"})):
        torch.manual_seed(args.seed)
        spec = TrainSpec(
            stores={"synth": str(store)},
            features={"synth": str(feats)},
            model={**cfg["model"], **overrides},
            train=train,
        )
        info = fit(spec, out / name)
        predict_file(
            out / name / "model.pt",
            {"synth": store},
            {"synth": feats},
            ["val", "test"],
            out / name / "predictions.h5",
            dtype="float32",
        )
        table = voxel_table([(out / name / "model.pt", out / name / "predictions.h5")], {"synth": store})
        table.to_csv(out / name / "voxels.csv", index=False)
        report["models"][name] = {
            **quality(table, truth),
            "val_r": info["val_r"],
            "epochs_run": info["epochs"],
            "seconds": info["seconds"],
        }
    full, frozen = report["models"]["full"], report["models"]["frozenrm"]
    report["checks"] = {
        "u_r >= 0.9 (both axes)": min(full["u_r_x"], full["u_r_y"]) >= TARGETS["u_r_min"],
        "late layer deeper than early": full["mean_layer_late"] > full["mean_layer_early"],
        "early r / ceiling >= 0.8": full["early_r_over_ceiling"] >= TARGETS["early_r_over_ceiling"],
        "full beats FrozenRM on early": full["early_mean_r"] > frozen["early_mean_r"],
    }
    report["seconds"] = round(time.time() - started, 1)
    print(json.dumps(report, indent=2))
    print(
        "\n| model | u r (x, y) | mean layer early / LO | early r | early r / ceiling | val r |\n|---|---|---|---|---|---|"
    )
    for name, m in report["models"].items():
        print(
            f"| {name} | {m['u_r_x']:.3f}, {m['u_r_y']:.3f} | {m['mean_layer_early']:.2f} / {m['mean_layer_late']:.2f} | "
            f"{m['early_mean_r']:.3f} | {m['early_r_over_ceiling']:.3f} | {m['val_r']:.3f} |"
        )


if __name__ == "__main__":
    main()
