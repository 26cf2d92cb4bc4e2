"""Checks on the synthetic brain, whose ground truth is known.

For every dataset of ``format: synthetic`` (its simulator folder holds ``<subject>/ground_truth.csv``):

1. **veROI vs simulated areas**: adjusted Rand index (ARI) between the veROI label and the simulated area
   (V1..LO; EEG: the simulated source area) of each voxel, pooled over the dataset's subjects, and between the
   veROI and the feature level (low / mid / high). Chance: the veROI labels permuted within each subject
   (ROI sizes kept), ``n_permutations`` times: mean, 95th percentile, and p = (1 + #null >= observed) / (1 + n).
2. **Decoding**: all-voxel retrieval top-1 / top-5 accuracy per subject (retrieval.csv rows roi_set = all)
   against chance 1 / n_candidates.
3. **RetinaMap** (fMRI datasets only): for the early voxels (simulated level 0, V1-V3), Pearson r between the learned u_x, u_y and the
   true receptive-field centres; and the spread (SD of u, both axes pooled) of early against high-level voxels
   (the paper: early voxels span the RetinaGrid, late ones crowd its centre).

Everything is in ``synthetic_checks.json``; :func:`summary_rows` flattens it for the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from afo.io.tables import ordered, read_roi_table, read_table, read_voxels
from afo.metrics import pearson_r
from afo.rois.veroi import adjusted_rand


def modality(root: str | Path) -> str:
    """The ``modality`` of a folder dataset's dataset.yaml ('' when there is none)."""
    import yaml

    path = Path(root) / "dataset.yaml"
    if not path.is_file():
        return ""
    return str((yaml.safe_load(path.read_text()) or {}).get("modality", ""))


def read_ground_truth(root: str | Path) -> pd.DataFrame:
    """Every subject's ground_truth.csv under a simulator folder (fmri/ or eeg/), with a subject column."""
    root = Path(root)
    frames = []
    for path in sorted(root.glob("*/ground_truth.csv")):
        frames.append(pd.read_csv(path, dtype={"area": str}).assign(subject=path.parent.name))
    if not frames:
        raise FileNotFoundError(f"{root}: no <subject>/ground_truth.csv (is this a simulator output folder?)")
    return pd.concat(frames, ignore_index=True)


def ari_with_null(labels: np.ndarray, truth: np.ndarray, groups: np.ndarray, n_permutations: int, seed: int) -> dict:
    """ARI of ``labels`` vs ``truth`` and its permutation null (labels shuffled within each group)."""
    observed = adjusted_rand(labels, truth)
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations)
    index_by_group = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    shuffled = labels.copy()
    for i in range(n_permutations):
        for idx in index_by_group:
            shuffled[idx] = labels[rng.permutation(idx)]
        null[i] = adjusted_rand(shuffled, truth)
    return {
        "ari": float(observed),
        "null_mean": float(null.mean()),
        "null_sd": float(null.std(ddof=1)) if n_permutations > 1 else 0.0,
        "null_q95": float(np.quantile(null, 0.95)),
        "p": float((1 + np.sum(null >= observed)) / (1 + n_permutations)),
        "n_voxels": int(labels.size),
        "n_rois": int(np.unique(labels).size),
        "n_true": int(np.unique(truth).size),
    }


def veroi_check(veroi: pd.DataFrame, truth: pd.DataFrame, dataset: str, n_permutations: int, seed: int) -> dict:
    """veROI vs simulated area and level for one dataset (pooled over subjects, and per subject)."""
    mine = veroi[veroi["dataset"] == dataset].merge(truth, on=["subject", "voxel"], how="inner")
    if mine.empty:
        raise ValueError(f"{dataset}: no voxel of the veROI table has a ground truth")
    labels = mine["roi"].astype(str).to_numpy()
    groups = mine["subject"].astype(str).to_numpy()
    out = {"areas": ari_with_null(labels, mine["area"].astype(str).to_numpy(), groups, n_permutations, seed)}
    if "level" in mine and mine["level"].nunique() > 1:
        out["levels"] = ari_with_null(labels, mine["level"].astype(str).to_numpy(), groups, n_permutations, seed + 1)
    out["per_subject"] = {
        s: float(adjusted_rand(g["roi"].astype(str).to_numpy(), g["area"].astype(str).to_numpy()))
        for s, g in sorted(mine.groupby("subject"))
    }
    return out


def decoding_check(retrieval: pd.DataFrame, dataset: str) -> dict:
    """All-voxel retrieval accuracy per subject against chance."""
    rows = retrieval[(retrieval["dataset"] == dataset) & (retrieval["roi_set"] == "all")]
    per_subject = {
        str(r.subject): {
            "top1": float(r.top1),
            "top5": float(r.top5),
            "n_candidates": int(r.n_candidates),
            "chance_top1": 1.0 / r.n_candidates,
            "chance_top5": min(5.0 / r.n_candidates, 1.0),
        }
        for r in rows.itertuples()
    }
    if not per_subject:
        return {}
    top1 = np.mean([v["top1"] for v in per_subject.values()])
    chance = np.mean([v["chance_top1"] for v in per_subject.values()])
    return {
        "mean_top1": float(top1),
        "mean_top5": float(np.mean([v["top5"] for v in per_subject.values()])),
        "mean_chance_top1": float(chance),
        "top1_over_chance": float(top1 / chance),
        "per_subject": per_subject,
    }


def retinotopy_check(voxels: pd.DataFrame, truth: pd.DataFrame, dataset: str) -> dict:
    """Learned u vs true RF centre of the early (level 0) voxels, per subject and pooled."""
    if not {"u_x", "u_y", "level"} <= set(truth.columns):
        return {}
    mine = voxels[voxels["dataset"] == dataset].merge(
        truth[["subject", "voxel", "u_x", "u_y", "level"]].rename(columns={"u_x": "true_u_x", "u_y": "true_u_y"}),
        on=["subject", "voxel"],
        how="inner",
    )
    mine = mine[np.isfinite(mine["u_x"]) & np.isfinite(mine["u_y"])]
    if mine.empty:
        return {}

    def scores(frame: pd.DataFrame) -> dict:
        early = frame[frame["level"] == 0]
        late = frame[frame["level"] == frame["level"].max()]
        spread = lambda f: float(np.sqrt(0.5 * (f["u_x"].var() + f["u_y"].var()))) if len(f) > 1 else float("nan")  # noqa: E731
        return {
            "n_early": int(len(early)),
            "r_x": float(pearson_r(early["u_x"].to_numpy(), early["true_u_x"].to_numpy())),
            "r_y": float(pearson_r(early["u_y"].to_numpy(), early["true_u_y"].to_numpy())),
            "sd_u_early": spread(early),
            "sd_u_late": spread(late),
        }

    per_subject = {s: scores(g) for s, g in sorted(mine.groupby("subject"))}
    out = {"pooled": scores(mine), "per_subject": per_subject}
    out["mean_r_x"] = float(np.nanmean([v["r_x"] for v in per_subject.values()]))
    out["mean_r_y"] = float(np.nanmean([v["r_y"] for v in per_subject.values()]))
    return out


def synthetic_checks(
    ground_truth: Mapping[str, str | Path],
    veroi_csv: str | Path,
    voxels_csv: str | Path,
    retrieval_csv: str | Path,
    model: str = "afo",
    n_permutations: int = 1000,
    seed: int = 0,
) -> dict:
    """All checks for every synthetic dataset (``ground_truth`` = dataset -> simulator folder)."""
    veroi = read_roi_table(veroi_csv)
    voxels = read_voxels(voxels_csv)
    retrieval = read_table(retrieval_csv)
    out: dict = {"model": model, "n_permutations": int(n_permutations), "datasets": {}}
    for dataset in ordered(ground_truth):
        truth = read_ground_truth(ground_truth[dataset])
        out["datasets"][dataset] = {
            "veroi_vs_areas": veroi_check(veroi, truth, dataset, n_permutations, seed),
            "decoding": decoding_check(retrieval, dataset),
            # Receptive-field centres are a property of fMRI voxels; an EEG channel x time point has none.
            "retinotopy": retinotopy_check(voxels, truth, dataset) if modality(ground_truth[dataset]) == "fmri" else {},
        }
    return out


def summary_rows(checks: dict) -> pd.DataFrame:
    """The headline numbers of :func:`synthetic_checks` as a table: dataset, check, value, reference (chance,
    or what the value is compared with), note."""
    rows = []
    for dataset, c in checks["datasets"].items():
        v = c["veroi_vs_areas"]
        rows.append(
            {
                "dataset": dataset,
                "check": "veROI vs simulated areas: ARI",
                "value": v["areas"]["ari"],
                "reference": v["areas"]["null_q95"],
                "note": f"chance = 95th percentile of {checks['n_permutations']} permutations; p = {v['areas']['p']:.3g}",
            }
        )
        if "levels" in v:
            rows.append(
                {
                    "dataset": dataset,
                    "check": "veROI vs simulated feature level: ARI",
                    "value": v["levels"]["ari"],
                    "reference": v["levels"]["null_q95"],
                    "note": f"p = {v['levels']['p']:.3g}",
                }
            )
        d = c["decoding"]
        if d:
            rows.append(
                {
                    "dataset": dataset,
                    "check": "decoding top-1 (all voxels, mean over subjects)",
                    "value": d["mean_top1"],
                    "reference": d["mean_chance_top1"],
                    "note": f"{d['top1_over_chance']:.1f} x chance",
                }
            )
            rows.append(
                {
                    "dataset": dataset,
                    "check": "decoding top-5 (all voxels, mean over subjects)",
                    "value": d["mean_top5"],
                    "reference": min(5 * d["mean_chance_top1"], 1.0),
                    "note": "",
                }
            )
        r = c["retinotopy"]
        if r:
            rows.append(
                {
                    "dataset": dataset,
                    "check": "RetinaMap early voxels: r(u_x, true centre x)",
                    "value": r["mean_r_x"],
                    "reference": 0.0,
                    "note": "mean over subjects",
                }
            )
            rows.append(
                {
                    "dataset": dataset,
                    "check": "RetinaMap early voxels: r(u_y, true centre y)",
                    "value": r["mean_r_y"],
                    "reference": 0.0,
                    "note": "mean over subjects",
                }
            )
            p = r["pooled"]
            rows.append(
                {
                    "dataset": dataset,
                    "check": "RetinaMap spread SD(u): early / late voxels",
                    "value": p["sd_u_early"],
                    "reference": p["sd_u_late"],
                    "note": "reference = SD of u of the late (high-level) voxels",
                }
            )
    return pd.DataFrame(rows, columns=["dataset", "check", "value", "reference", "note"])


def write_synthetic_checks(checks: dict, out_json: str | Path, out_html: str | Path) -> list[dict]:
    """The result of :func:`synthetic_checks` as JSON and its headline numbers as an HTML table; returns those numbers."""
    import json

    from afo.io import atomic_write_text
    from afo.report import write_html_table

    atomic_write_text(out_json, json.dumps(checks, indent=2) + "\n")
    summary = summary_rows(checks)
    write_html_table(
        summary,
        out_html,
        f"Synthetic-brain checks ({checks['model']})",
        "Ground truth from the simulator: veROIs against the simulated areas (adjusted Rand index against a "
        "within-subject permutation null), all-voxel decoding against chance, learned RetinaMap against the "
        "true receptive-field centres of the early (V1-V3) voxels.",
    )
    return summary.to_dict(orient="records")
