"""ROI assignment tables for the recipe: veROI from stage-0 head weights, a dataset's own ROIs, randROI.

An ROI table is a CSV with one row per modelled voxel: dataset, subject, voxel, roi (string labels). Voxels
the table leaves out are not modelled by ROI models (bad voxels, or voxels without a dataset label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from afo.data.store import PreparedStore
from afo.io import atomic_path
from afo.io.tables import ROI_COLUMNS, write_csv
from afo.rois.veroi import VeroiResult, cluster_veroi, random_rois_like
from afo.training.modelfile import load_model


def head_weight_matrix(model_paths: Sequence[str | Path]) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-voxel head weights averaged over models: (voxel keys [N] as dataset/subject/voxel, weights [N, D]).

    The stage-0 models share their initialisation and differ only in the order of their batches, so their
    head-weight dimensions stay aligned and averaging them denoises (paper 3.3: an average of all-ROI models).
    """
    keys = None
    total = None
    for path in model_paths:
        model, payload = load_model(path)
        parts_keys, parts_w = [], []
        for subject in sorted(model.subjects):
            dataset, name = subject.split("/", 1)
            voxels = payload.voxels[subject].numpy()
            parts_keys.append(pd.DataFrame({"dataset": dataset, "subject": name, "voxel": voxels}))
            with torch.no_grad():
                parts_w.append(model.head_weights(subject).double().cpu().numpy())
        these = pd.concat(parts_keys, ignore_index=True)
        weights = np.concatenate(parts_w)
        if keys is None:
            keys, total = these, weights
        elif not keys.equals(these):
            raise ValueError(f"{path}: models differ in their subjects or voxels; stage-0 models must share them")
        else:
            total = total + weights
    if keys is None:
        raise ValueError("no stage-0 model given")
    return keys, total / len(model_paths)


def veroi_table(
    model_paths: Sequence[str | Path], n_kmeans: int, n_rois: int | None, threshold: float | None, seed: int
) -> tuple[pd.DataFrame, VeroiResult]:
    keys, weights = head_weight_matrix(model_paths)
    result = cluster_veroi(weights, n_kmeans=n_kmeans, n_rois=n_rois, threshold=threshold, seed=seed)
    return keys.assign(roi=result.labels.astype(str)), result


def dataset_roi_table(stores: Mapping[str, str | Path], roi_set: str) -> pd.DataFrame:
    """The datasets' own ROI labels; voxels without a label ('') or bad voxels are left out."""
    rows = []
    for dataset, path in sorted(stores.items()):
        with PreparedStore(path) as store:
            for subject in store.subjects:
                labels = store.rois(subject, roi_set)
                keep = (labels != "") & ~store.bad_voxel(subject)
                voxels = np.flatnonzero(keep)
                rows.append(
                    pd.DataFrame(
                        {"dataset": dataset, "subject": subject, "voxel": voxels, "roi": labels[keep].astype(str)}
                    )
                )
    table = pd.concat(rows, ignore_index=True)
    if table.empty:
        raise ValueError(f"no voxel has a label in ROI set {roi_set!r}")
    return table


def random_roi_table(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """randROI: the same voxels, ROI count and sizes (per subject too), labels assigned at random."""
    codes, names = pd.factorize(table["roi"], sort=True)
    groups = pd.factorize(table["dataset"] + "/" + table["subject"])[0]
    shuffled = random_rois_like(codes, groups=groups, seed=seed)
    return table.assign(roi=np.asarray(names)[shuffled])


def write_table(table: pd.DataFrame, path: str | Path) -> dict:
    """Write an ROI table (dataset, subject, voxel, roi) atomically; returns its voxel count per ROI."""
    write_csv(table[list(ROI_COLUMNS)], path)
    return {"voxels": len(table), "rois": table["roi"].value_counts().sort_index().to_dict()}


def write_veroi(
    model_paths: Sequence[str | Path],
    n_kmeans: int,
    n_rois: int | None,
    threshold: float | None,
    seed: int,
    table_path: str | Path,
    clustering_path: str | Path,
) -> dict:
    """results/rois/veroi.csv and the clustering behind it (linkage, cut, k-means labels; .npz for the dendrogram)."""
    table, result = veroi_table(model_paths, n_kmeans, n_rois, threshold, seed)
    with atomic_path(clustering_path, suffix=".npz") as tmp:
        np.savez(
            tmp,
            linkage=result.linkage,
            cut_height=result.cut_height,
            labels=result.labels,
            kmeans_labels=result.kmeans_labels,
            centroid_rois=result.centroid_rois,
        )
    return write_table(table, table_path)
