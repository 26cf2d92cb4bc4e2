"""Brain decoding by retrieval (paper section 4.5, Figures 7-9).

Every candidate image is forwarded through the encoding model (the caller does that; this module works on
arrays), and the candidates are ranked, for each measured response pattern, by Pearson r between the
model's predicted response and the measured, repeat-averaged response over the selected voxels (all voxels,
or one ROI / veROI through ``voxel_mask``).

Missing data:

- voxels that are NaN in a measured pattern are left out *for that query* (each query is correlated over its
  own finite voxels); queries sharing the same set of finite voxels are scored together in one matrix product;
- voxels where any candidate's prediction is not finite are left out for every query (with a warning): a
  model normally predicts every voxel, and per-candidate voxel sets would make the scores incomparable;
- a score is NaN where fewer than 3 voxels remain or a pattern is constant; NaN scores rank last.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from afo.metrics import MIN_PAIRS

# Rows of z-scored candidates are processed in blocks of about this many float64 elements (~64 MB).
_BLOCK_ELEMENTS = 1 << 23


def _zscore_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` [n, k] centred and divided by their norm (float64); also a [n] mask of usable rows."""
    x = x.astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    scale = np.max(np.abs(x), axis=1, initial=0.0)
    # Constant rows (zero norm up to rounding) have no correlation: they are flagged, not divided.
    ok = norm > np.finfo(np.float64).eps * 64 * np.sqrt(x.shape[1]) * np.maximum(scale, 1e-300)
    x /= np.where(ok, norm, 1.0)[:, None]
    return x, ok


def rank_candidates(
    predicted: np.ndarray,
    measured: np.ndarray,
    voxel_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank candidate images for each measured response pattern by Pearson r (best first).

    Args:
        predicted: [n_candidates, V] model predictions for the candidate images.
        measured: [V] or [n_queries, V] measured (repeat-averaged) responses; NaN voxels are left out per query.
        voxel_mask: optional [V] bool, the voxels to match (an ROI); None = all voxels.

    Returns:
        order: [n_queries, n_candidates] int64 candidate indices, best first (NaN scores last, ties by index).
        scores: [n_queries, n_candidates] float64 Pearson r of each candidate for each query.
    """
    predicted = np.asarray(predicted)
    measured = np.asarray(measured)
    if predicted.ndim != 2:
        raise ValueError(f"predicted must be [n_candidates, V], got shape {predicted.shape}")
    if measured.ndim == 1:
        measured = measured[None, :]
    if measured.ndim != 2:
        raise ValueError(f"measured must be [V] or [n_queries, V], got shape {measured.shape}")
    n_cand, n_vox = predicted.shape
    if measured.shape[1] != n_vox:
        raise ValueError(f"measured has {measured.shape[1]} voxels but predicted has {n_vox}")
    if n_cand == 0:
        raise ValueError("predicted has no candidates")
    if voxel_mask is None:
        selected = np.ones(n_vox, dtype=bool)
    else:
        voxel_mask = np.asarray(voxel_mask)
        if voxel_mask.dtype != bool or voxel_mask.shape != (n_vox,):
            raise ValueError(
                f"voxel_mask must be a bool array of shape ({n_vox},), got {voxel_mask.dtype} {voxel_mask.shape}"
            )
        selected = voxel_mask.copy()
        if not selected.any():
            raise ValueError("voxel_mask selects no voxel")
    bad_pred = ~np.all(np.isfinite(predicted), axis=0) & selected
    if bad_pred.any():
        warnings.warn(
            f"{int(bad_pred.sum())} selected voxels have non-finite predictions; they are left out",
            RuntimeWarning,
            stacklevel=2,
        )
        selected &= ~bad_pred
    cols = np.flatnonzero(selected)
    P = predicted[:, cols]
    M = measured[:, cols]
    valid = np.isfinite(M)

    n_q = M.shape[0]
    scores = np.full((n_q, n_cand), np.nan)
    # Queries are grouped by their set of finite voxels (usually one group: NaN voxels are NaN for the
    # whole subject), so each group is one matrix product of z-scored rows.
    packed = np.packbits(valid, axis=1)
    _, group_of = np.unique(packed, axis=0, return_inverse=True)
    group_of = group_of.ravel()
    for g in range(group_of.max() + 1 if n_q else 0):
        queries = np.flatnonzero(group_of == g)
        use = valid[queries[0]]
        k = int(use.sum())
        if k < MIN_PAIRS:
            continue
        zm, ok_m = _zscore_rows(M[np.ix_(queries, np.flatnonzero(use))])
        block = max(1, _BLOCK_ELEMENTS // k)
        P_use = P[:, use] if k < use.size else P
        for start in range(0, n_cand, block):
            zp, ok_p = _zscore_rows(P_use[start : start + block])
            r = zm @ zp.T  # rows are unit-norm and centred: the product is Pearson r
            r[~ok_m, :] = np.nan
            r[:, ~ok_p] = np.nan
            scores[queries, start : start + block] = np.clip(r, -1.0, 1.0)
    # Stable sort on -r with NaN pushed to the end: ties keep candidate order, NaN never outranks a score.
    key = np.where(np.isnan(scores), np.inf, -scores)
    order = np.argsort(key, axis=1, kind="stable")
    return order, scores


def retrieval_accuracy(
    predicted: np.ndarray,
    measured: np.ndarray,
    true_index: np.ndarray,
    voxel_mask: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5),
) -> dict:
    """Top-k retrieval accuracy of the true image among the candidates.

    Args:
        predicted: [n_candidates, V] predictions for the candidate images (e.g. all test images).
        measured: [n_queries, V] measured, repeat-averaged responses (or [V] for one query).
        true_index: [n_queries] int, index into the candidates of the image each query was measured for.
        voxel_mask: optional [V] bool voxel selection (an ROI).
        ks: the k of the top-k accuracies to report.

    Returns:
        {"top{k}": float for each k, "n_candidates": int, "n_queries": int (queries with a score),
        "ranks": [n_queries] float64}. A rank is 0 for a query whose true image scores best; ties count
        against the true image (rank = number of other candidates scoring at least as high), so a constant
        prediction cannot look accurate. A query whose true image has no score (too few finite voxels,
        constant pattern) has rank NaN and is left out of the accuracies; top-k is NaN if no query is left.
    """
    order, scores = rank_candidates(predicted, measured, voxel_mask)
    n_q, n_cand = scores.shape
    true_index = np.asarray(true_index).reshape(-1)
    if true_index.shape != (n_q,):
        raise ValueError(f"true_index must have one entry per query ({n_q}), got shape {true_index.shape}")
    if not np.issubdtype(true_index.dtype, np.integer):
        raise ValueError(f"true_index must be integers, got {true_index.dtype}")
    if n_q and (true_index.min() < 0 or true_index.max() >= n_cand):
        raise ValueError(f"true_index out of range [0, {n_cand})")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {ks}")
    true_score = scores[np.arange(n_q), true_index]
    with np.errstate(invalid="ignore"):
        at_least = (scores >= true_score[:, None]).sum(axis=1) - 1  # NaN compares False: never counted
    ranks = np.where(np.isnan(true_score), np.nan, at_least.astype(np.float64))
    scored = ~np.isnan(ranks)
    out: dict = {}
    for k in ks:
        out[f"top{k}"] = float(np.mean(ranks[scored] < k)) if scored.any() else float("nan")
    out["n_candidates"] = int(n_cand)
    out["n_queries"] = int(scored.sum())
    out["ranks"] = ranks
    return out
