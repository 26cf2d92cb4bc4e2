"""Scores shared by evaluation, linear probing and decoding.

``pearson_r`` is the one per-voxel Pearson correlation used everywhere in afo, so that the encoding tables,
the linear-probing benchmark and the decoding ranks all treat missing data the same way:

- only pairs where *both* values are finite count (NaN in a response is a masked voxel/trial, docs/design.md);
- sums are accumulated in float64 whatever the input dtype (float16 / float32 predictions of NSD-sized
  test sets lose digits otherwise);
- the result is NaN where fewer than ``MIN_PAIRS`` finite pairs remain or either side has zero variance
  over those pairs (a constant prediction has no defined correlation; reporting 0 would bias means).

:class:`PearsonAccumulator` gives the same r (to float64 rounding) from row blocks, for data never held whole.
"""

from __future__ import annotations

import numpy as np

#: fewer finite pairs than this give NaN: with two points |r| is always 1.
MIN_PAIRS = 3

# Column blocks are sized so that one float64 temporary holds about this many elements (~64 MB).
_BLOCK_ELEMENTS = 1 << 23


def pearson_r(pred: np.ndarray, target: np.ndarray, axis: int = 0) -> np.ndarray:
    """NaN-aware Pearson r between ``pred`` and ``target`` along ``axis``.

    Args:
        pred: array of any shape, e.g. [n_samples, n_voxels] predictions.
        target: array of the same shape, e.g. [n_samples, n_voxels] measured responses.
        axis: the sample axis the correlation runs over (default 0: one r per column).

    Returns:
        float64 array with ``axis`` removed (a 0-d array for 1-D inputs); NaN where a column has fewer than
        3 pairs with both values finite, or zero variance on either side over those pairs.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pearson_r: pred shape {pred.shape} != target shape {target.shape}")
    if pred.ndim == 0:
        raise ValueError("pearson_r: inputs must have at least one dimension (the sample axis)")
    a = np.moveaxis(pred, axis, 0)
    b = np.moveaxis(target, axis, 0)
    out_shape = a.shape[1:]
    n = a.shape[0]
    a = a.reshape(n, -1)
    b = b.reshape(n, -1)
    n_cols = a.shape[1]
    r = np.full(n_cols, np.nan, dtype=np.float64)
    # Column blocks bound the float64 temporaries for large [n_test, n_voxels] arrays.
    step = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n_cols, step):
        sl = slice(start, start + step)
        r[sl] = _pearson_block(a[:, sl], b[:, sl])
    return r.reshape(out_shape)


def _pearson_block(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r per column of two [n, k] blocks (two-pass, float64)."""
    a = a.astype(np.float64, copy=False)
    b = b.astype(np.float64, copy=False)
    mask = np.isfinite(a) & np.isfinite(b)
    count = mask.sum(axis=0)
    safe = np.maximum(count, 1)
    a0 = np.where(mask, a, 0.0)
    b0 = np.where(mask, b, 0.0)
    # Two passes (mean first, then centred products) instead of sum-of-squares formulas: the one-pass form
    # cancels catastrophically for responses with a large offset (e.g. raw BOLD around 1000).
    da = np.where(mask, a0 - a0.sum(axis=0) / safe, 0.0)
    db = np.where(mask, b0 - b0.sum(axis=0) / safe, 0.0)
    ss_a = np.einsum("ij,ij->j", da, da)
    ss_b = np.einsum("ij,ij->j", db, db)
    cov = np.einsum("ij,ij->j", da, db)
    scale_a = np.max(np.abs(a0), axis=0, initial=0.0)
    scale_b = np.max(np.abs(b0), axis=0, initial=0.0)
    return _finish(count, ss_a, ss_b, cov, scale_a, scale_b)


def _finish(count, ss_a, ss_b, cov, scale_a, scale_b) -> np.ndarray:
    """r from per-column pair counts, centred sums of squares and products, and the largest |value| per side."""
    # "Zero variance" up to rounding: a constant column can leave ~1e-32 relative residue after centring.
    tiny = np.finfo(np.float64).eps * 64
    flat = (ss_a <= count * (tiny * scale_a) ** 2) | (ss_b <= count * (tiny * scale_b) ** 2)
    valid = (count >= MIN_PAIRS) & ~flat
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(ss_a * ss_b)
    r = np.clip(r, -1.0, 1.0)
    return np.where(valid, r, np.nan)


class PearsonAccumulator:
    """:func:`pearson_r` per column of [samples, k] data that arrives in row blocks (memory: O(k)).

    Each block's centred sums are computed two-pass, then merged with the running ones by the pairwise update of
    Chan, Golub and LeVeque (stable, no sum-of-squares cancellation), so the result equals :func:`pearson_r` on
    the stacked blocks to float64 rounding.
    """

    def __init__(self, k: int):
        self.count = np.zeros(k)
        self.mean_a, self.mean_b = np.zeros(k), np.zeros(k)
        self.ss_a, self.ss_b, self.cov = np.zeros(k), np.zeros(k), np.zeros(k)
        self.scale_a, self.scale_b = np.zeros(k), np.zeros(k)

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        """pred, target [b, k]: the next rows."""
        a = np.asarray(pred, dtype=np.float64)
        b = np.asarray(target, dtype=np.float64)
        if a.shape != b.shape or a.ndim != 2 or a.shape[1] != self.count.size:
            raise ValueError(f"PearsonAccumulator: blocks {a.shape} and {b.shape}, expected [b, {self.count.size}]")
        mask = np.isfinite(a) & np.isfinite(b)
        n2 = mask.sum(axis=0).astype(np.float64)
        safe = np.maximum(n2, 1)
        a0, b0 = np.where(mask, a, 0.0), np.where(mask, b, 0.0)
        mean_a2, mean_b2 = a0.sum(axis=0) / safe, b0.sum(axis=0) / safe
        da, db = np.where(mask, a0 - mean_a2, 0.0), np.where(mask, b0 - mean_b2, 0.0)
        n1 = self.count
        n = n1 + n2
        w = np.where(n > 0, n1 * n2 / np.maximum(n, 1), 0.0)
        delta_a, delta_b = mean_a2 - self.mean_a, mean_b2 - self.mean_b
        self.ss_a += np.einsum("ij,ij->j", da, da) + delta_a * delta_a * w
        self.ss_b += np.einsum("ij,ij->j", db, db) + delta_b * delta_b * w
        self.cov += np.einsum("ij,ij->j", da, db) + delta_a * delta_b * w
        share = np.where(n > 0, n2 / np.maximum(n, 1), 0.0)
        self.mean_a += delta_a * share
        self.mean_b += delta_b * share
        self.count = n
        self.scale_a = np.maximum(self.scale_a, np.max(np.abs(a0), axis=0, initial=0.0))
        self.scale_b = np.maximum(self.scale_b, np.max(np.abs(b0), axis=0, initial=0.0))

    def r(self) -> np.ndarray:
        """float64 [k], as :func:`pearson_r` of all rows added."""
        return _finish(self.count, self.ss_a, self.ss_b, self.cov, self.scale_a, self.scale_b)
