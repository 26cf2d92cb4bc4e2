"""A new subject on the frozen core vs the same subject from scratch, at equal steps.

On the synthetic brain (``afo simulate``, small settings): the last fMRI subject is held out; a model is trained on
the others (the "released" model); then, for each seed, the holdout subject is fitted

- **finetune**: on the released model's frozen conv blocks, a new TopyNeck and head (:mod:`afo.training.finetune`);
- **scratch**: a whole model (conv blocks, neck and head) on the holdout subject alone (:func:`afo.training.fit.fit`),

with the same data, batch size, epochs (patience = max_epochs: no early stop) and seed, so both take the same
optimiser steps. Score: Pearson r per voxel on the holdout subject's test images (repeat-averaged), as in
voxels.csv; mean over voxels, and the median of r_test_norm.

    python benchmarks/finetune.py --out /tmp/afo-finetune-bench            # three seeds, about 20 minutes on a busy 2-core machine
    python benchmarks/finetune.py --out DIR --seeds 0 1 2 3 4 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from afo.data.folder import prepare
from afo.evaluation.scores import voxel_table
from afo.features import BackboneSpec, extract_features
from afo.simulate import SimulationConfig, simulate
from afo.training.finetune import FinetuneSpec, finetune
from afo.training.fit import TrainSpec, fit
from afo.training.predict import predict_file

SIMULATION = {"n_images": 160, "n_test_images": 24, "n_fmri_subjects": 4, "n_eeg_subjects": 0, "image_size": 32}
BACKBONE = BackboneSpec("resnet18", layers=(1, 2), resolution=32)
MODEL = {"conv_width": 16, "out_dim": 16, "n_convs": 2, "kernel_size": 3, "pe_frequencies": 8, "mlp_width": 32}
TRAIN = {
    "lr": 0.01,
    "weight_decay": 0.0001,
    "betas": [0.9, 0.999],
    "batch_size": 16,
    "max_voxels": 300,
    "epoch_fraction": 1.0,
    "top_k": 2,
    "lambda_entropy": 0.01,
    "smoothl1_beta": 0.01,
    "dk_weight": 0.5,
    "seed": 0,
}


def split_dataset(root: Path, subjects: list[str], out: Path, name: str) -> Path:
    """A folder dataset with some subjects of ``root`` (files linked, not copied; subject folders are real
    folders because the adapter finds subjects by walking the tree, which does not follow links)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset.yaml").write_text(f"name: {name}\nmodality: fmri\n")
    if not (out / "images").exists():
        os.symlink((root / "images").resolve(), out / "images")
    for subject in subjects:
        (out / subject).mkdir(exist_ok=True)
        for f in (root / subject).iterdir():
            if not (out / subject / f.name).exists():
                os.symlink(f.resolve(), out / subject / f.name)
    return out


def test_scores(model: Path, store: Path, features: Path, dataset: str) -> dict:
    """Mean test r and median r_test_norm of the holdout subject (voxels.csv's definitions)."""
    preds = model.with_name("predictions.h5")
    predict_file(model, {dataset: store}, {dataset: features}, ["val", "test"], preds, dtype="float32")
    table = voxel_table([(model, preds)], {dataset: store})
    return {
        "mean_r_test": round(float(table["r_test"].mean()), 4),
        "median_r_test_norm": round(float(table["r_test_norm"].median()), 4),
        "n_voxels": int(table["r_test"].notna().sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="work folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--epochs", type=int, default=10, help="epochs of each holdout fit (finetune and scratch alike)"
    )
    parser.add_argument(
        "--base-epochs", type=int, default=12, help="max epochs of the released model (patience 6, half an epoch each)"
    )
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = args.out
    started = time.time()
    if not (out / "sim").exists():
        simulate(out / "sim", SimulationConfig.from_dict({**SIMULATION, "seed": 0}))
    fmri = out / "sim" / "fmri"
    subjects = sorted(p.name for p in fmri.iterdir() if (p / "responses.npy").exists())
    train_subjects, holdout_subject = subjects[:-1], subjects[-1]
    datasets = {
        "synth": split_dataset(fmri, train_subjects, out / "data" / "synth", "synth"),
        "newlab": split_dataset(fmri, [holdout_subject], out / "data" / "newlab", "newlab"),
    }
    stores, features = {}, {}
    for name, root in datasets.items():
        stores[name], features[name] = out / "prepared" / f"{name}.h5", out / "features" / f"{name}.h5"
        if not stores[name].exists():
            stores[name].parent.mkdir(parents=True, exist_ok=True)
            prepare(root, stores[name], image_size=SIMULATION["image_size"])
        if not features[name].exists():
            features[name].parent.mkdir(parents=True, exist_ok=True)
            extract_features(stores[name], features[name], BACKBONE)
    base = out / "models" / "released" / "model.pt"
    if not base.exists():
        fit(
            TrainSpec(
                {"synth": str(stores["synth"])},
                {"synth": str(features["synth"])},
                MODEL,
                {**TRAIN, "max_epochs": args.base_epochs, "patience": 6, "epoch_fraction": 0.5},
            ),
            base.parent,
        )
    rows = []
    holdout_train = {**TRAIN, "max_epochs": args.epochs, "patience": args.epochs}
    for seed in args.seeds:
        for method in ("finetune", "scratch"):
            work = out / "models" / f"{method}_e{args.epochs}_seed{seed}"
            model = work / "model.pt"
            t0 = time.time()
            if method == "finetune":
                report = finetune(
                    FinetuneSpec(
                        str(base),
                        {"newlab": str(stores["newlab"])},
                        {"newlab": str(features["newlab"])},
                        {**holdout_train, "seed": seed},
                    ),
                    model,
                )
            else:
                report = fit(
                    TrainSpec(
                        {"newlab": str(stores["newlab"])},
                        {"newlab": str(features["newlab"])},
                        MODEL,
                        {**holdout_train, "seed": seed},
                    ),
                    work,
                )
            row = {
                "method": method,
                "seed": seed,
                "epochs": report["epochs"],
                "val_r": round(float(report["val_r"]), 4),
                **test_scores(model, stores["newlab"], features["newlab"], "newlab"),
                "seconds": round(time.time() - t0, 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    for method in ("finetune", "scratch"):
        r = [x["mean_r_test"] for x in rows if x["method"] == method]
        print(f"{method}: mean test r {np.mean(r):.4f} +- {np.std(r):.4f} over seeds {args.seeds}")
    print(
        f"holdout subject {holdout_subject}, trained on {train_subjects}; {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {time.time() - started:.0f} s in all"
    )


if __name__ == "__main__":
    main()
