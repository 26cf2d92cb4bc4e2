"""Figures of the RetinaMap against measured pRF maps, one per dataset and visual ROI (:mod:`afo.evaluation.prf`).

Each figure has two panels over the ROI's voxels above the pRF R² threshold: the model's eccentricity against the
pRF eccentricity (deg, identity line, Pearson r) and the model's polar angle against the pRF angle (deg, 0 = right,
90 = up; identity line, circular r). A left/right or up/down swap of the model's map shows as points along the
anti-diagonal of the angle panel.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from afo.evaluation.prf import circular_r, usable
from afo.figures.plots import _figure, _marker_size, _save
from afo.metrics import pearson_r


def plot_prf_roi(part: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Model vs pRF eccentricity and polar angle of the voxels of ``part`` (rows of the per-voxel table)."""
    fig = _figure(10.0, 4.8)
    ax_ecc, ax_angle = fig.subplots(1, 2)
    size = _marker_size(len(part))
    ecc, prf_ecc = part["ecc_deg"].to_numpy(dtype=float), part["prf_ecc_deg"].to_numpy(dtype=float)
    top = float(np.nanmax(np.concatenate([ecc, prf_ecc, [1.0]])))
    ax_ecc.scatter(prf_ecc, ecc, s=size, alpha=0.6, linewidths=0, rasterized=True)
    ax_ecc.plot([0, top], [0, top], "k--", linewidth=0.8)
    ax_ecc.set_xlabel("pRF eccentricity (deg)")
    ax_ecc.set_ylabel("model eccentricity (deg)")
    ax_ecc.set_title(f"eccentricity: r = {float(pearson_r(ecc, prf_ecc)):.2f}")
    angle, prf_angle = part["angle_deg"].to_numpy(dtype=float), part["prf_angle_deg"].to_numpy(dtype=float)
    ax_angle.scatter(prf_angle, angle, s=size, alpha=0.6, linewidths=0, color="tab:orange", rasterized=True)
    ax_angle.plot([0, 360], [0, 360], "k--", linewidth=0.8)
    ax_angle.set_xlim(0, 360)
    ax_angle.set_ylim(0, 360)
    ax_angle.set_xticks([0, 90, 180, 270, 360])
    ax_angle.set_yticks([0, 90, 180, 270, 360])
    ax_angle.set_xlabel("pRF polar angle (deg; 0 right, 90 up)")
    ax_angle.set_ylabel("model polar angle (deg)")
    ax_angle.set_title(f"polar angle: circular r = {circular_r(angle, prf_angle):.2f}")
    fig.suptitle(title)
    return _save(fig, path)


def prf_figures(table: pd.DataFrame, min_r2: float, out_dir: str | Path, model: str) -> list[Path]:
    """``<dataset>__<roi>.png`` per dataset and visual ROI (and ``all``) with voxels above ``min_r2``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = usable(table, min_r2)
    written = []
    for dataset in sorted(kept["dataset"].unique()):
        ds = kept[kept["dataset"] == dataset]
        labels = ds["roi"].fillna("").astype(str)
        for roi in ["all", *sorted(set(labels) - {""})]:
            part = ds if roi == "all" else ds[labels == roi]
            stem = re.sub(r"[^A-Za-z0-9_\-]", "-", f"{dataset}__{roi}")
            title = f"{model}: {dataset} / {roi}, {len(part)} voxels with pRF R² >= {min_r2:g}%"
            written.append(plot_prf_roi(part, out_dir / f"{stem}.png", title))
    return written
