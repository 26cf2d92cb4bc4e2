"""Linear-probing benchmark of frozen feature extractors (paper Figure 1; Brain-Score / Conwell et al. protocol).

For one feature extractor and one subject:

1. standardise every feature on the *training* images' mean and standard deviation (features with zero
   training variance are only centred). Why: ViT features carry a few channels with activations hundreds of
   times larger than the rest; unscaled, the PCA would spend its components on those channels alone;
2. PCA to a common dimension (``n_components``, default 100), fitted on the training images only, so that
   extractors with different widths compete on equal terms and no test information leaks into the basis;
3. per-voxel ridge regression on the PCA scores with a per-voxel alpha chosen by K-fold cross-validation on
   the training images (himalaya ``RidgeCV``, ``local_alpha=True``: one alpha per voxel);
4. Pearson r per voxel between the prediction and the measured response of the test images
   (:func:`afo.metrics.pearson_r`).

Missing responses (NaN in ``train_Y`` / ``test_Y``; docs/design.md allows NaN per voxel and trial):

- a voxel with fewer than 3 finite training values, or zero training variance, is not fitted: its r_test and
  best_alpha are NaN;
- a voxel with *some* NaN training rows has those rows imputed with the voxel's training mean. After the
  intercept is removed these rows have a zero target, so they pull the voxel's weights slightly towards 0
  (by about the missing fraction) but do not bias the direction of the fit; Pearson r is scale-free, so
  r_test is nearly unaffected. Fitting every NaN pattern separately would cost one ridge solve per pattern;
- NaN test values are left out of that voxel's r (pairwise, in :func:`afo.metrics.pearson_r`).

Train and test rows are whatever the caller passes: one row per image with the repeat-averaged response is
the usual choice (docs/design.md keeps features per unique image).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sklearn.decomposition import PCA, IncrementalPCA

from afo.metrics import MIN_PAIRS, pearson_r

Backend = Literal["numpy", "torch", "torch_cuda"]

#: Above this many feature values the PCA is fitted incrementally in row batches (IncrementalPCA).
DEFAULT_MAX_DENSE_ELEMENTS = 100_000_000  # 0.4 GB as float32


@dataclass
class ProbeResult:
    """Outcome of :func:`linear_probe` for one feature extractor and one subject.

    Attributes:
        r_test: [V] float64 Pearson r per voxel on the test rows (NaN: voxel not fitted or not scorable).
        best_alpha: [V] float64 ridge alpha chosen per voxel by cross-validation (NaN: voxel not fitted).
        cv_score: [V] float64 mean cross-validated R^2 at the chosen alpha (NaN: voxel not fitted); > 0 means the
            features predict the voxel at all.
        alpha_at_edge: [V] bool, the chosen alpha is the smallest or largest of the grid (widen the grid if
            many voxels hit the upper edge).
        fitted: [V] bool, voxel entered the ridge fit.
        n_components: PCA dimension actually used (after capping).
        explained_variance_ratio: [n_components] variance ratio of the PCA components (standardised
            training features).
        pred_test: [n_test, V] float32 test predictions (NaN for voxels not fitted).
    """

    r_test: np.ndarray
    best_alpha: np.ndarray
    cv_score: np.ndarray
    alpha_at_edge: np.ndarray
    fitted: np.ndarray
    n_components: int
    explained_variance_ratio: np.ndarray
    pred_test: np.ndarray = field(repr=False)


@dataclass
class FeatureScaler:
    """Per-feature standardisation on training statistics: (x - mean_) / scale_, both [F] float64."""

    mean_: np.ndarray
    scale_: np.ndarray

    @classmethod
    def fit(cls, features, batch_size: int = 4096) -> FeatureScaler:
        """Mean and sd per feature of ``features`` [n, F] (array, memmap or h5py dataset; read in row batches)."""
        n, n_features = features.shape
        total = np.zeros(n_features)
        total_sq = np.zeros(n_features)
        shift = np.asarray(features[0:1], dtype=np.float64)[0]  # shifted sums: no cancellation for large offsets
        for start in range(0, n, batch_size):
            block = np.asarray(features[start : start + batch_size], dtype=np.float64) - shift
            total += block.sum(axis=0)
            total_sq += np.einsum("ij,ij->j", block, block)
        mean_shifted = total / n
        var = np.maximum(total_sq / n - mean_shifted**2, 0.0)
        scale = np.sqrt(var)
        # Features constant on the training images carry no information; scale 1 keeps them finite (zero).
        scale = np.where(scale > 1e-12 * np.maximum(np.abs(shift), 1.0), scale, 1.0)
        return cls(mean_=mean_shifted + shift, scale_=scale)

    def transform(self, features, dtype=np.float32, batch_size: int = 4096) -> np.ndarray:
        """Standardised copy of ``features`` [n, F] as ``dtype`` (float64 arithmetic, one row batch at a time)."""
        n = features.shape[0]
        out = np.empty((n, self.mean_.size), dtype=dtype)
        for start in range(0, n, batch_size):
            block = np.asarray(features[start : start + batch_size], dtype=np.float64)
            out[start : start + batch_size] = (block - self.mean_) / self.scale_
        return out


class _ScaledRows:
    """Row-sliceable view that standardises on the fly (lets IncrementalPCA stream memmaps / h5py datasets)."""

    def __init__(self, features, scaler: FeatureScaler):
        self.features = features
        self.scaler = scaler
        self.shape = features.shape

    def __getitem__(self, rows) -> np.ndarray:
        block = self.scaler.transform(self.features[rows])
        if not np.all(np.isfinite(block)):
            raise ValueError("features contain NaN or inf; linear probing needs finite features")
        return block


def cap_components(n_components: int, n_samples: int, n_features: int) -> int:
    """``n_components`` capped at min(n_samples, n_features), with a warning when capped."""
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    limit = min(n_samples, n_features)
    if n_components > limit:
        warnings.warn(
            f"n_components={n_components} exceeds min(n_train={n_samples}, n_features={n_features}); using {limit}",
            UserWarning,
            stacklevel=3,
        )
        return limit
    return n_components


def fit_pca(
    train_features,
    n_components: int,
    seed: int = 0,
    *,
    batch_size: int | None = None,
    max_dense_elements: int = DEFAULT_MAX_DENSE_ELEMENTS,
) -> PCA | IncrementalPCA:
    """PCA fitted on the training images' features only.

    Args:
        train_features: [n_train, F] array (or anything row-sliceable with ``.shape``, e.g. np.memmap, h5py
            dataset). Standardise it first (:class:`FeatureScaler`) for the probing protocol.
        n_components: wanted dimension; capped at min(n_train, F) with a warning.
        seed: random state of the randomized SVD solver (results are deterministic for a given seed).
        batch_size: row batch for IncrementalPCA; giving it forces the incremental fit.
        max_dense_elements: n_train * F above which the fit is incremental (bounded memory: NSD-sized
            feature matrices of a wide backbone do not fit in RAM as float64).

    Returns:
        a fitted ``sklearn.decomposition.PCA`` (small inputs) or ``IncrementalPCA`` (large inputs).
    """
    n, n_features = train_features.shape
    k = cap_components(n_components, n, n_features)
    if batch_size is None and n * n_features <= max_dense_elements:
        pca = PCA(n_components=k, svd_solver="auto", random_state=seed)
        pca.fit(np.asarray(train_features[:], dtype=np.float32))
        return pca
    # IncrementalPCA needs every batch (including the last) to hold at least n_components rows.
    if batch_size is None:
        batch_size = max(5 * k, max_dense_elements // max(n_features, 1) // 4)
    batch_size = max(int(batch_size), k)
    ipca = IncrementalPCA(n_components=k, batch_size=batch_size)
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < k:
        starts.pop()  # fold a too-short tail into the previous batch
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else n
        ipca.partial_fit(np.asarray(train_features[start:stop], dtype=np.float32))
    return ipca


def transform_batched(pca: PCA | IncrementalPCA, features, batch_size: int = 8192) -> np.ndarray:
    """PCA scores [n, n_components] float32 of row-sliceable ``features`` [n, F], in row batches."""
    n = features.shape[0]
    out = np.empty((n, pca.n_components_), dtype=np.float32)
    for start in range(0, n, batch_size):
        out[start : start + batch_size] = pca.transform(np.asarray(features[start : start + batch_size]))
    return out


@contextlib.contextmanager
def himalaya_backend(name: Backend) -> Iterator[object]:
    """Set himalaya's backend for the duration of a block and restore the previous one afterwards.

    himalaya keeps its backend in a module-level variable; restoring it keeps this module free of lasting
    global state (not thread-safe: do not run probes with different backends concurrently in one process).
    """
    from himalaya.backend import get_backend, set_backend

    if name not in ("numpy", "torch", "torch_cuda"):
        raise ValueError(f"backend must be 'numpy', 'torch' or 'torch_cuda', got {name!r}")
    previous = get_backend()
    backend = set_backend(name, on_error="raise")
    try:
        yield backend
    finally:
        set_backend(previous, on_error="warn")


def _check_xy(name: str, X, Y) -> None:
    if len(X.shape) != 2:
        raise ValueError(f"{name}_X must be 2-D [n, F], got shape {tuple(X.shape)}")
    if Y.ndim != 2:
        raise ValueError(f"{name}_Y must be 2-D [n, V], got shape {Y.shape}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"{name}_X has {X.shape[0]} rows but {name}_Y has {Y.shape[0]}")


def linear_probe(
    train_X,
    train_Y: np.ndarray,
    test_X,
    test_Y: np.ndarray,
    n_components: int = 100,
    alphas: np.ndarray | None = None,
    cv: int | object = 5,
    backend: Backend = "numpy",
    seed: int = 0,
    *,
    n_targets_batch: int | None = 20_000,
    max_dense_elements: int = DEFAULT_MAX_DENSE_ELEMENTS,
) -> ProbeResult:
    """Linear probe: standardise -> PCA (train only) -> per-voxel RidgeCV -> test Pearson r per voxel.

    Args:
        train_X: [n_train, F] frozen features of the training images (array, memmap or h5py dataset).
        train_Y: [n_train, V] responses to those images; NaN allowed (see module docstring).
        test_X: [n_test, F] features of the test images.
        test_Y: [n_test, V] responses; NaN allowed (left out of that voxel's r).
        n_components: PCA dimension (capped at min(n_train, F) with a warning).
        alphas: [n_alphas] ridge grid searched per voxel (default: 10^-2 .. 10^6, 17 values).
        cv: number of contiguous K folds (sklearn ``KFold`` without shuffling, as himalaya does) over the
            training rows, or a list of (train_idx, val_idx) pairs, e.g.
            ``list(GroupKFold(5).split(train_X, groups=image_ids))`` when several rows show one image (rows of
            one image must not be split across folds).
        backend: himalaya backend: "numpy", "torch" (CPU) or "torch_cuda" (GPU).
        seed: PCA random state.
        n_targets_batch: voxels per himalaya batch (bounds memory for many voxels; None = all at once).
        max_dense_elements: see :func:`fit_pca`.

    Returns:
        :class:`ProbeResult`.
    """
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import r2_score

    train_Y = np.asarray(train_Y)
    test_Y = np.asarray(test_Y)
    _check_xy("train", train_X, train_Y)
    _check_xy("test", test_X, test_Y)
    if train_X.shape[1] != test_X.shape[1]:
        raise ValueError(f"train_X has {train_X.shape[1]} features but test_X has {test_X.shape[1]}")
    if train_Y.shape[1] != test_Y.shape[1]:
        raise ValueError(f"train_Y has {train_Y.shape[1]} voxels but test_Y has {test_Y.shape[1]}")
    alphas = np.asarray(np.logspace(-2, 6, 17) if alphas is None else alphas, dtype=np.float64).ravel()
    if alphas.size == 0 or np.any(~np.isfinite(alphas)) or np.any(alphas <= 0):
        raise ValueError("alphas must be a non-empty list of positive finite numbers")
    n_train, n_voxels = train_Y.shape
    if isinstance(cv, (int, np.integer)) and not 2 <= cv <= n_train:
        raise ValueError(f"cv must be between 2 and n_train={n_train}, got {cv}")

    # 1-2. standardise and project with statistics of the training images only.
    scaler = FeatureScaler.fit(train_X)
    scaled_train = _ScaledRows(train_X, scaler)
    pca = fit_pca(scaled_train, n_components, seed=seed, max_dense_elements=max_dense_elements)
    Z_train = transform_batched(pca, scaled_train)
    Z_test = transform_batched(pca, _ScaledRows(test_X, scaler))

    # 3. which voxels can be fitted, and the mean imputation of their missing training rows.
    finite = np.isfinite(train_Y)
    n_finite = finite.sum(axis=0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN voxels: handled through `fitted`
        col_mean = np.nanmean(train_Y, axis=0, dtype=np.float64)
        col_sd = np.nanstd(train_Y, axis=0, dtype=np.float64)
    fitted = (n_finite >= MIN_PAIRS) & np.isfinite(col_sd) & (col_sd > 0)
    fit_cols = np.flatnonzero(fitted)

    r_test = np.full(n_voxels, np.nan)
    best_alpha = np.full(n_voxels, np.nan)
    cv_score = np.full(n_voxels, np.nan)
    pred_test = np.full(test_Y.shape, np.nan, dtype=np.float32)
    if fit_cols.size:
        # float32 on the GPU (memory, speed); float64 on CPU where the cost is small and rounding is not.
        dtype = np.float32 if backend == "torch_cuda" else np.float64
        Y_fit = np.where(finite[:, fit_cols], train_Y[:, fit_cols], col_mean[fit_cols]).astype(dtype, copy=False)
        # R^2 as the cross-validation score: per voxel it ranks alphas like the default negative loss, and its sign
        # says whether the voxel is predicted at all (the alpha-at-edge check counts those voxels only).
        solver_params = {
            "warn": False,
            "n_targets_batch": n_targets_batch,
            "n_targets_batch_refit": n_targets_batch,
            "score_func": r2_score,
        }
        with himalaya_backend(backend) as bk:
            model = RidgeCV(alphas=alphas, cv=cv, fit_intercept=True, solver_params=solver_params)
            model.fit(Z_train.astype(dtype), Y_fit)
            pred = bk.to_numpy(model.predict(Z_test.astype(dtype)))
            chosen = bk.to_numpy(model.best_alphas_)
            scores = bk.to_numpy(model.cv_scores_)
        pred_test[:, fit_cols] = pred
        best_alpha[fit_cols] = chosen
        cv_score[fit_cols] = scores
        # 4. test r; NaN test values drop out pairwise.
        r_test[fit_cols] = pearson_r(pred, test_Y[:, fit_cols])

    # himalaya returns exp(-log(alpha)), so compare to the grid edges with a relative tolerance.
    alpha_at_edge = fitted & (
        np.isclose(best_alpha, alphas.min(), rtol=1e-4) | np.isclose(best_alpha, alphas.max(), rtol=1e-4)
    )
    return ProbeResult(
        r_test=r_test,
        best_alpha=best_alpha,
        cv_score=cv_score,
        alpha_at_edge=alpha_at_edge,
        fitted=fitted,
        n_components=int(pca.n_components_),
        explained_variance_ratio=np.asarray(pca.explained_variance_ratio_, dtype=np.float64),
        pred_test=pred_test,
    )
