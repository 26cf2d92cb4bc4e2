"""Per-voxel scores of a trained model (or of per-ROI models assembled): voxels.csv and summary.csv.

voxels.csv: one row per voxel: dataset, subject, voxel, roi, x, y, z, u_x, u_y, layer, eta_0..eta_{L-1},
r_val, r_test, nc, r_test_norm (then dataset_roi, the dataset's own label, and ecc_deg, angle_deg: u in degrees of
visual angle where the dataset's visual angle is known, :mod:`afo.evaluation.retinotopy`). summary.csv: one row per dataset,
subject and roi (plus roi = "all"): n_voxels, mean_r_test, median_r_test_norm, n_test_images (the test images
scored) and n_test_left_out (test images left out because another training dataset trained on them, from
``results/data/overlap.csv``: :func:`afo.data.overlap.left_out_images`).

r is Pearson's r over the split's images between the prediction and the response averaged over the image's
repeats; r_test_norm = r_test·|r_test| / (nc / 100), the signed fraction of explainable variance explained
(empty where the noise ceiling is unknown; a negative r stays negative, so it never counts as explained variance). Bad voxels (all-NaN, constant) get a row with empty scores, never vanish.

Datasets on fsaverage with a noise ceiling (Algonauts 2023, NSD with ``space: fsaverage``) also get the Algonauts
2023 challenge score in summary.csv (:func:`challenge_score`; ``challenge_score_median``, ``challenge_score_mean``),
per subject and ROI, and in extra rows per ROI class (``roi`` = ``<class>/<label>``) and pooled over the subjects
(``subject`` = ``all``); empty for every other dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from afo.data.store import SPLIT_CODE, PreparedStore
from afo.evaluation.predictions import PredictionError, assemble, split_predictions
from afo.evaluation.retinotopy import add_degrees
from afo.io.tables import read_roi_table, write_csv
from afo.metrics import MIN_PAIRS, pearson_r
from afo.training.modelfile import load_model

KEYS = ("dataset", "subject", "voxel")
NC_ZERO = 1e-14  # the challenge's stand-in for a zero noise ceiling (as a fraction), so the division is defined


def neck_readouts(model_path: str | Path, voxels: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """RetinaMapper u and LayerSelector eta of the given voxels (subject key -> store indices) of a model file.

    Columns: dataset, subject, voxel, u_x, u_y, layer (argmax of eta), eta_0..eta_{L-1}.
    """
    model, payload = load_model(model_path)
    frames = []
    for key, wanted in sorted(voxels.items()):
        known = payload.voxels[key].numpy()
        index = torch.from_numpy(np.searchsorted(known, wanted))
        with torch.no_grad():
            u = model.retina(key, index).numpy()
            eta = model.layer_weights(key, index).numpy()
        dataset, subject = key.split("/", 1)
        table = pd.DataFrame(
            {
                "dataset": dataset,
                "subject": subject,
                "voxel": wanted,
                "u_x": u[:, 0],
                "u_y": u[:, 1],
                "layer": eta.argmax(1),
            }
        )
        for k in range(eta.shape[1]):
            table[f"eta_{k}"] = eta[:, k]
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def split_scores(
    prediction_files: Sequence[str | Path],
    stores: Mapping[str, str | Path],
    leave_out: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """r_val and r_test of every predicted voxel (NaN where a split has fewer than 3 images).

    ``leave_out``: dataset -> store rows of images left out of the test split (shared with a training dataset).
    """
    scored = {}
    for split in ("val", "test"):
        for p in split_predictions(prediction_files, stores, split):
            if split == "test" and leave_out and leave_out.get(p.dataset) is not None:
                keep = ~np.isin(p.images, leave_out[p.dataset])
                p.images, p.predicted, p.measured = p.images[keep], p.predicted[keep], p.measured[keep]
            r = pearson_r(p.predicted, p.measured) if p.images.size >= MIN_PAIRS else np.full(p.voxels.size, np.nan)
            frame = scored.setdefault(
                p.key, pd.DataFrame({"dataset": p.dataset, "subject": p.subject, "voxel": p.voxels})
            )
            frame[f"r_{split}"] = r
    if not scored:
        raise PredictionError("no subject of the prepared stores is in the prediction files")
    return pd.concat(scored.values(), ignore_index=True)


def voxel_table(
    models: Sequence[tuple[str | Path, str | Path]],
    stores: Mapping[str, str | Path],
    rois: str | Path | None = None,
    dataset_roi_set: str = "roi",
    leave_out: Mapping[str, np.ndarray] | None = None,
    visual_angles: Mapping[str, float | None] | None = None,
) -> pd.DataFrame:
    """voxels.csv of a model, or of per-ROI models assembled: ``models`` = [(model file, its prediction file)].

    Each voxel's row comes from the one prediction file that holds it (per-ROI models predict their own ROI);
    ``rois`` (the ROI assignment table) fills the roi column, else the dataset's own labels do; ``leave_out``
    (dataset -> store rows) drops shared images from the test split (see :func:`split_scores`); ``visual_angles``
    (dataset -> full stimulus width in degrees, None = unknown) fills ecc_deg and angle_deg.
    """
    scored = split_scores([p for _, p in models], stores, leave_out)
    necks = []
    for model_path, prediction_file in models:
        predicted = {key: voxels for key, (_, voxels, _) in assemble([prediction_file]).items()}
        necks.append(neck_readouts(model_path, predicted))
    scored = scored.merge(pd.concat(necks, ignore_index=True), on=KEYS, how="left")
    base = []
    for dataset, path in sorted(stores.items()):
        with PreparedStore(path) as store:
            for subject in store.subjects:
                coords = store.coords(subject)
                own = (
                    store.rois(subject, dataset_roi_set)
                    if dataset_roi_set in store.info(subject).roi_sets
                    else np.full(len(coords), "")
                )
                base.append(
                    pd.DataFrame(
                        {
                            "dataset": dataset,
                            "subject": subject,
                            "voxel": np.arange(len(coords)),
                            "x": coords[:, 0],
                            "y": coords[:, 1],
                            "z": coords[:, 2],
                            "nc": store.noise_ceiling(subject),
                            "dataset_roi": own,
                        }
                    )
                )
    table = pd.concat(base, ignore_index=True).merge(scored, on=KEYS, how="left")
    if rois is not None:
        table = table.merge(read_roi_table(rois)[list(KEYS) + ["roi"]], on=KEYS, how="left")
    else:
        table["roi"] = table["dataset_roi"]
    table["r_test_norm"] = normalised_score(table["r_test"].to_numpy(), table["nc"].to_numpy())
    eta_cols = sorted((c for c in table if c.startswith("eta_")), key=lambda c: int(c.split("_")[1]))
    cols = [
        "dataset",
        "subject",
        "voxel",
        "roi",
        "x",
        "y",
        "z",
        "u_x",
        "u_y",
        "layer",
        *eta_cols,
        "r_val",
        "r_test",
        "nc",
        "r_test_norm",
        "dataset_roi",
    ]
    table = add_degrees(table[cols], visual_angles or {})
    table["layer"] = table["layer"].astype("Int64")
    return table


def normalised_score(r: np.ndarray, nc: np.ndarray) -> np.ndarray:
    """r_test_norm: the signed share of explainable variance explained, r·|r| / (nc / 100); NaN where nc is unknown or 0.

    Signed because r² would count a voxel predicted with a negative r as explained variance.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        score = r * np.abs(r) / (nc / 100.0)
    return np.where(nc > 0, score, np.nan)


def challenge_score(r: np.ndarray, nc: np.ndarray) -> np.ndarray:
    """The Algonauts 2023 score per vertex: 100 · max(r, 0)² / NC, NC the noise ceiling as a fraction (0 -> 1e-14),
    clipped at 100. ``nc`` is in percent, as stores keep it; NaN where r or the noise ceiling is unknown."""
    r = np.asarray(r, dtype=np.float64)
    fraction = np.asarray(nc, dtype=np.float64) / 100.0
    fraction = np.where(fraction == 0, NC_ZERO, fraction)
    with np.errstate(invalid="ignore"):
        return np.minimum(100.0 * np.clip(r, 0.0, None) ** 2 / fraction, 100.0)


def challenge_labels(stores: Mapping[str, str | Path]) -> pd.DataFrame:
    """The voxels the challenge score is for: every voxel of the fsaverage datasets with a noise ceiling, one row
    with roi ``all`` and one per ROI set it is labelled in (roi ``<set>/<label>``). Columns: dataset, subject,
    voxel, roi."""
    frames = []
    for dataset, path in sorted(stores.items()):
        with PreparedStore(path) as store:
            for subject in store.subjects:
                layout = store.layout(subject)
                nc = store.noise_ceiling(subject)
                if layout is None or layout.kind != "fsaverage" or not np.isfinite(nc).any():
                    continue
                voxels = np.arange(nc.size)
                frames.append(pd.DataFrame({"dataset": dataset, "subject": subject, "voxel": voxels, "roi": "all"}))
                for roi_set in store.info(subject).roi_sets:
                    labels = np.asarray(store.rois(subject, roi_set), dtype=object)
                    keep = labels != ""
                    roi = [f"{roi_set}/{label}" for label in labels[keep]]
                    frames.append(
                        pd.DataFrame({"dataset": dataset, "subject": subject, "voxel": voxels[keep], "roi": roi})
                    )
    if not frames:
        return pd.DataFrame(columns=[*KEYS, "roi"])
    return pd.concat(frames, ignore_index=True)


def left_out_counts(
    stores: Mapping[str, str | Path], leave_out: Mapping[str, np.ndarray] | None = None
) -> pd.DataFrame:
    """Per dataset and subject: n_test_images (test images scored), n_test_left_out (shared ones left out) and
    test_split (where the test trials come from: the subject attr ``test_split`` of an adapter that chose between
    sources, e.g. Algonauts 2023's ``release`` | ``held_out``; ``dataset`` = the dataset's own test split)."""
    rows = []
    for dataset, path in sorted(stores.items()):
        dropped = np.asarray((leave_out or {}).get(dataset, []), dtype=np.int64)
        with PreparedStore(path) as store:
            for subject in store.subjects:
                test = np.unique(store.trial_image(subject)[store.trial_split(subject) == SPLIT_CODE["test"]])
                n_out = int(np.isin(test, dropped).sum())
                rows.append(
                    {
                        "dataset": dataset,
                        "subject": subject,
                        "n_test_images": int(test.size) - n_out,
                        "n_test_left_out": n_out,
                        "test_split": str(store.subject_attrs(subject).get("test_split", "dataset")),
                    }
                )
    return pd.DataFrame(rows, columns=["dataset", "subject", "n_test_images", "n_test_left_out", "test_split"])


def with_roi_all(voxels: pd.DataFrame) -> pd.DataFrame:
    """Each voxel twice: under its ROI (voxels without one dropped) and under roi "all", so one groupby over
    ``roi`` gives the per-ROI rows and the whole-dataset row together."""
    labelled = voxels.assign(roi=voxels["roi"].fillna("").astype(str))
    both = pd.concat([labelled, voxels.assign(roi="all")], ignore_index=True)
    return both[both["roi"] != ""]


def _aggregate(voxels: pd.DataFrame) -> pd.DataFrame:
    return (
        voxels.groupby(["dataset", "subject", "roi"], sort=True)
        .agg(
            n_voxels=("voxel", "size"),
            mean_r_test=("r_test", "mean"),
            median_r_test_norm=("r_test_norm", "median"),
            challenge_score_median=("challenge_score", "median"),
            challenge_score_mean=("challenge_score", "mean"),
        )
        .reset_index()
    )


def summary_table(
    voxels: pd.DataFrame, counts: pd.DataFrame | None = None, challenge: pd.DataFrame | None = None
) -> pd.DataFrame:
    """summary.csv: per dataset, subject and roi (and 'all'): n_voxels, mean_r_test, median_r_test_norm, the
    challenge score's median and mean, and the subject's ``counts`` (n_test_images, n_test_left_out;
    :func:`left_out_counts`) when given.

    ``challenge`` (:func:`challenge_labels`): the voxels scored with the challenge score; they add rows per ROI
    class and, with subject ``all``, pooled over the subjects of their dataset.
    """
    voxels = voxels.assign(challenge_score=np.nan)
    if challenge is not None and not challenge.empty:
        scored = voxels.merge(challenge[list(KEYS)].drop_duplicates(), on=list(KEYS), how="left", indicator=True)
        on = (scored["_merge"] == "both").to_numpy()
        voxels["challenge_score"] = np.where(on, challenge_score(voxels["r_test"], voxels["nc"]), np.nan)
    out = _aggregate(with_roi_all(voxels))
    if challenge is not None and not challenge.empty:
        scores = voxels.drop(columns="roi").merge(challenge, on=list(KEYS))
        classes = scores[scores["roi"] != "all"]
        extra = pd.concat([_aggregate(classes), _aggregate(scores.assign(subject="all"))], ignore_index=True)
        out = pd.concat([out, extra], ignore_index=True)
    if counts is not None:
        out = out.merge(counts.astype({"subject": str}), on=["dataset", "subject"], how="left")
    return out


def write_tables(
    voxels: pd.DataFrame,
    out_dir: str | Path,
    counts: pd.DataFrame | None = None,
    challenge: pd.DataFrame | None = None,
) -> tuple[Path, Path]:
    """Write voxels.csv and summary.csv (with the test-image ``counts`` and the ``challenge`` voxels' scores when
    given, :func:`summary_table`) atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    summary = summary_table(voxels, counts, challenge)
    return write_csv(voxels, out_dir / "voxels.csv"), write_csv(summary, out_dir / "summary.csv")
