"""The RetinaMap against measured retinotopy: each voxel's model RF position vs its pRF fit (NSD's pRF maps).

Per voxel (``results/analysis/prf/<model>.csv``): dataset, subject, voxel, roi (the visual ROI: NSD's
prf-visualrois label, V1v ... hV4), prf_r2, prf_ecc_deg, prf_angle_deg, prf_size_deg (measured) and ecc_deg,
angle_deg (the model's u in degrees, :mod:`afo.evaluation.retinotopy`). Both angles follow NSD's convention
(0 = right horizontal meridian, 90 = upper vertical meridian).

Per visual ROI (and ``all``), over the voxels whose pRF R² is at least ``min_r2`` (percent) and whose model
and pRF positions are both finite (``<model>_rois.csv``): n_voxels, r_ecc (Pearson r of the eccentricities),
circ_r_angle (circular correlation of the angles, Jammalamadaka & SenGupta 2001: 1 = the same angles, -1 = one
the mirror image of the other, as a left/right or up/down swap gives), median_abs_angle_diff (deg, 0-180).
The circular correlation needs a well-defined mean direction: read it per visual ROI (NSD's ROIs each cover a
quarter field); pooled over ``all``, whose angles cover the whole circle, it is unstable and the median absolute
difference is the measure to read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from afo.metrics import pearson_r

KEYS = ["dataset", "subject", "voxel"]
MIN_VOXELS = 3  # fewer voxels give no correlation


def comparison_table(voxels: pd.DataFrame, prf: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Per-voxel table (module docstring) of one dataset: its voxels.csv rows joined with its pRF table
    (:func:`afo.data.nsd_prf.prf_table`)."""
    mine = voxels[voxels["dataset"] == dataset][KEYS + ["ecc_deg", "angle_deg"]]
    measured = prf.assign(dataset=dataset, subject=prf["subject"].astype(str)).rename(columns={"visual_roi": "roi"})
    table = measured.merge(mine.astype({"subject": str}), on=KEYS, how="inner")
    columns = KEYS + ["roi", "prf_r2", "prf_ecc_deg", "prf_angle_deg", "prf_size_deg", "ecc_deg", "angle_deg"]
    return table[columns]


def circular_r(a_deg: np.ndarray, b_deg: np.ndarray) -> float:
    """Circular correlation of two angle samples [N] in degrees (NaN for fewer than 3 or no spread)."""
    a, b = np.radians(np.asarray(a_deg, dtype=np.float64)), np.radians(np.asarray(b_deg, dtype=np.float64))
    if a.size < MIN_VOXELS:
        return float("nan")
    sa = np.sin(a - np.angle(np.exp(1j * a).mean()))
    sb = np.sin(b - np.angle(np.exp(1j * b).mean()))
    denom = np.sqrt((sa**2).sum() * (sb**2).sum())
    return float((sa * sb).sum() / denom) if denom > 0 else float("nan")


def angle_difference(a_deg: np.ndarray, b_deg: np.ndarray) -> np.ndarray:
    """|a - b| on the circle, degrees in [0, 180]."""
    return np.abs((np.asarray(a_deg) - np.asarray(b_deg) + 180.0) % 360.0 - 180.0)


def usable(table: pd.DataFrame, min_r2: float) -> pd.DataFrame:
    """Voxels with a pRF R² >= ``min_r2`` and finite measured and model positions."""
    finite = np.isfinite(table[["prf_ecc_deg", "prf_angle_deg", "ecc_deg", "angle_deg"]].to_numpy(dtype=np.float64))
    return table[(table["prf_r2"].to_numpy(dtype=np.float64) >= min_r2) & finite.all(axis=1)]


def roi_summary(table: pd.DataFrame, min_r2: float) -> pd.DataFrame:
    """Per dataset and visual ROI (and 'all'): n_voxels, r_ecc, circ_r_angle, median_abs_angle_diff, min_r2."""
    kept = usable(table, min_r2)
    kept = kept.assign(roi=kept["roi"].fillna("").astype(str))
    rows = []
    for dataset in sorted(kept["dataset"].unique()):
        ds = kept[kept["dataset"] == dataset]
        groups = [("all", ds)] + [(roi, ds[ds["roi"] == roi]) for roi in sorted(set(ds["roi"]) - {""})]
        for roi, part in groups:
            n = len(part)
            ecc = (part["ecc_deg"].to_numpy(), part["prf_ecc_deg"].to_numpy())
            rows.append(
                {
                    "dataset": dataset,
                    "roi": roi,
                    "n_voxels": n,
                    "r_ecc": float(pearson_r(*ecc)) if n >= MIN_VOXELS else float("nan"),
                    "circ_r_angle": circular_r(part["angle_deg"], part["prf_angle_deg"]),
                    "median_abs_angle_diff": float(
                        np.median(angle_difference(part["angle_deg"], part["prf_angle_deg"]))
                    )
                    if n
                    else float("nan"),
                    "min_r2": min_r2,
                }
            )
    columns = ["dataset", "roi", "n_voxels", "r_ecc", "circ_r_angle", "median_abs_angle_diff", "min_r2"]
    return pd.DataFrame(rows, columns=columns)
