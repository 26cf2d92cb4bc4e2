"""Per-voxel scores of a trained model (or of per-ROI models assembled) and the DESIGN.md tables.

voxels.csv: one row per voxel: dataset, subject, voxel, roi, x, y, z, u_x, u_y, layer, eta_0..eta_{L-1},
r_val, r_test, nc, r_test_norm (then dataset_roi, the dataset's own label). summary.csv: one row per dataset,
subject and roi (plus roi = "all"): n_voxels, mean_r_test, median_r_test_norm.

r is Pearson's r over the split's images between the prediction and the response averaged over the image's
repeats; r_test_norm = r_test^2 / (nc / 100), the fraction of explainable variance explained (empty where
the noise ceiling is unknown). Bad voxels (all-NaN, constant) get a row with empty scores, never vanish.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from afo.data.store import PreparedStore
from afo.metrics import pearson_r
from afo.training.checkpoint import load_model
from afo.io.tables import read_roi_selection
from afo.training.data import FeatureBank
from afo.training.module import predict_images
from afo.training.predict import model_subjects


def model_voxel_table(model_path: str | Path, stores: Mapping[str, str | Path], bank: FeatureBank, device: torch.device, only: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Scores and TopyNeck read-outs of every voxel a model predicts (restricted to ``only`` if given)."""
    model, payload = load_model(model_path)
    model.to(device)
    subjects = model_subjects(payload, stores, only)
    if not subjects:
        raise ValueError("no subject has any selected, usable voxel: check the ROI selection and the stores")
    rows = []
    for s, columns in subjects:
        index = torch.from_numpy(columns)
        with torch.no_grad():
            u = model.retina(s.key, index.to(device)).cpu().numpy()
            eta = model.layer_weights(s.key, index.to(device)).cpu().numpy()
        scores = {}
        for split in ("val", "test"):
            images = s.split_images[split]
            if images.size >= 3:
                pred = predict_images(model, bank, s, images, device)[:, index.numpy()]
                scores[split] = pearson_r(pred, s.split_means[split].numpy())
            else:
                scores[split] = np.full(s.voxels.size, np.nan)
        table = pd.DataFrame(
            {"dataset": s.dataset, "subject": s.key.split("/", 1)[1], "voxel": s.voxels,
             "u_x": u[:, 0], "u_y": u[:, 1], "layer": eta.argmax(1), "r_val": scores["val"], "r_test": scores["test"]}
        )
        for k in range(eta.shape[1]):
            table[f"eta_{k}"] = eta[:, k]
        rows.append(table)
    return pd.concat(rows, ignore_index=True)


def voxel_table(
    models: Sequence[tuple[str | None, str | Path]],
    stores: Mapping[str, str | Path],
    features: Mapping[str, str | Path],
    rois: str | Path | None = None,
    dataset_roi_set: str = "roi",
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """voxels.csv of a model, or of per-ROI models assembled: ``models`` = [(roi or None, model file)].

    With ROIs, each voxel's row comes from the model of its own ROI (``rois`` = the assignment table).
    """
    device = torch.device(device)
    bank = FeatureBank(features)
    assignment = pd.read_csv(rois, dtype={"roi": str}) if rois else None
    parts = []
    for roi, path in models:
        only = read_roi_selection(rois, roi) if (roi is not None and rois) else None
        parts.append(model_voxel_table(path, stores, bank, device, only))
    scored = pd.concat(parts, ignore_index=True)
    if scored.duplicated(["dataset", "subject", "voxel"]).any():
        raise ValueError("two models score the same voxel: give each ROI's model once")
    base = []
    for dataset, path in sorted(stores.items()):
        with PreparedStore(path) as store:
            for subject in store.subjects:
                coords = store.coords(subject)
                own = store.rois(subject, dataset_roi_set) if dataset_roi_set in store.info(subject).roi_sets else np.full(len(coords), "")
                base.append(pd.DataFrame({
                    "dataset": dataset, "subject": subject, "voxel": np.arange(len(coords)),
                    "x": coords[:, 0], "y": coords[:, 1], "z": coords[:, 2],
                    "nc": store.noise_ceiling(subject), "dataset_roi": own,
                }))
    table = pd.concat(base, ignore_index=True).merge(scored, on=["dataset", "subject", "voxel"], how="left")
    if assignment is not None:
        table = table.merge(assignment[["dataset", "subject", "voxel", "roi"]], on=["dataset", "subject", "voxel"], how="left")
    else:
        table["roi"] = table["dataset_roi"]
    with np.errstate(invalid="ignore", divide="ignore"):
        table["r_test_norm"] = table["r_test"] ** 2 / (table["nc"] / 100.0)
    table.loc[~(table["nc"] > 0), "r_test_norm"] = np.nan
    eta_cols = sorted((c for c in table if c.startswith("eta_")), key=lambda c: int(c.split("_")[1]))
    cols = ["dataset", "subject", "voxel", "roi", "x", "y", "z", "u_x", "u_y", "layer", *eta_cols,
            "r_val", "r_test", "nc", "r_test_norm", "dataset_roi"]
    table = table[cols]
    table["layer"] = table["layer"].astype("Int64")
    return table


def summary_table(voxels: pd.DataFrame) -> pd.DataFrame:
    """summary.csv: per dataset, subject and roi (and 'all'): n_voxels, mean_r_test, median_r_test_norm."""
    frames = [voxels.assign(roi=voxels["roi"].fillna("").astype(str)), voxels.assign(roi="all")]
    both = pd.concat(frames, ignore_index=True)
    both = both[both["roi"] != ""]
    out = both.groupby(["dataset", "subject", "roi"], sort=True).agg(
        n_voxels=("voxel", "size"), mean_r_test=("r_test", "mean"), median_r_test_norm=("r_test_norm", "median")
    )
    return out.reset_index()


def write_tables(voxels: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """Write voxels.csv and summary.csv atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in (("voxels.csv", voxels), ("summary.csv", summary_table(voxels))):
        tmp = out_dir / f".{name}.tmp"
        frame.to_csv(tmp, index=False, float_format="%.6g")
        tmp.replace(out_dir / name)
        paths.append(out_dir / name)
    return paths[0], paths[1]
