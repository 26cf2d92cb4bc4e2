"""Linear probing (afo.probing.ridge) and the shared NaN-aware Pearson r (afo.metrics)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import afo.probing.ridge as probe
from afo.metrics import pearson_r
from afo.probing.ridge import FeatureScaler, fit_pca, linear_probe

# ---------------------------------------------------------------------------------------------- pearson_r


def test_pearson_r_matches_numpy_per_column():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 7))
    b = a * 0.5 + rng.normal(size=(50, 7))
    expected = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(7)]
    np.testing.assert_allclose(pearson_r(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(pearson_r(a.T, b.T, axis=1), expected, rtol=1e-12)
    assert pearson_r(a[:, 0], b[:, 0]).shape == ()


def test_pearson_r_ignores_nan_pairs_and_flags_degenerate_columns():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 4))
    b = a + rng.normal(size=(40, 4))
    a[3, 0] = np.nan
    b[7, 0] = np.nan
    keep = np.isfinite(a[:, 0]) & np.isfinite(b[:, 0])
    b[:, 1] = 2.0  # constant target
    a[2:, 2] = np.nan  # only 2 finite pairs
    r = pearson_r(a, b)
    assert r[0] == pytest.approx(np.corrcoef(a[keep, 0], b[keep, 0])[0, 1], rel=1e-12)
    assert np.isnan(r[1]) and np.isnan(r[2]) and np.isfinite(r[3])


def test_pearson_r_float32_with_large_offset_is_accurate():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(2000, 3))
    b = a + rng.normal(size=(2000, 3))
    exact = pearson_r(a, b)
    # A raw-BOLD-like offset in float32: float64 accumulation and two passes keep the digits.
    r32 = pearson_r((a + 1000.0).astype(np.float32), (b + 1000.0).astype(np.float32))
    np.testing.assert_allclose(r32, exact, atol=1e-3)


def test_pearson_r_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        pearson_r(np.zeros((3, 2)), np.zeros((3, 3)))


# ---------------------------------------------------------------------------------------------- probe data


def _synthetic(n_train=240, n_test=160, n_features=48, n_latent=8, seed=0):
    """Features driven by a low-dimensional latent; voxels: clean linear, noisy linear, pure noise."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    latent = rng.normal(size=(n, n_latent))
    mixing = rng.normal(size=(n_latent, n_features))
    # Unequal feature scales (one channel x100) test the standardisation.
    X = latent @ mixing + 0.1 * rng.normal(size=(n, n_features))
    X[:, 0] *= 100.0
    w = rng.normal(size=(n_latent, 30))
    signal = latent @ w
    signal /= signal.std(axis=0)
    Y = np.empty((n, 30))
    Y[:, :10] = signal[:, :10] + 0.1 * rng.normal(size=(n, 10))  # high SNR
    Y[:, 10:20] = signal[:, 10:20] + 3.0 * rng.normal(size=(n, 10))  # low SNR
    Y[:, 20:] = rng.normal(size=(n, 10))  # noise only
    return X[:n_train], Y[:n_train], X[n_train:], Y[n_train:]


@pytest.fixture(scope="module")
def probed():
    train_X, train_Y, test_X, test_Y = _synthetic()
    return linear_probe(train_X, train_Y, test_X, test_Y, n_components=20, cv=5)


def test_linear_voxels_are_predicted_and_noise_voxels_are_not(probed):
    r = probed.r_test
    assert r.shape == (30,)
    assert np.all(r[:10] > 0.95)
    assert np.all(r[10:20] > 0.1)
    assert abs(np.mean(r[20:])) < 0.1 and np.all(np.abs(r[20:]) < 0.3)
    assert probed.n_components == 20
    assert probed.pred_test.shape == (160, 30)


def test_alpha_is_chosen_per_voxel_and_grows_as_snr_falls(probed):
    alpha = probed.best_alpha
    assert np.all(np.isfinite(alpha))
    assert np.median(alpha[10:20]) > 10 * np.median(alpha[:10])
    # Noise-only voxels want strong shrinkage, several at the top of the grid.
    assert np.median(alpha[20:]) > 100 * np.median(alpha[:10])
    at_edge = np.isclose(alpha, 1e6, rtol=1e-4) | np.isclose(alpha, 1e-2, rtol=1e-4)
    np.testing.assert_array_equal(probed.alpha_at_edge, at_edge)
    assert probed.alpha_at_edge[20:].any() and not probed.alpha_at_edge[:10].any()


def test_pca_and_scaling_use_training_images_only(monkeypatch):
    train_X, train_Y, test_X, test_Y = _synthetic()
    calls = []
    real_fit_pca = probe.fit_pca

    def spy(features, n_components, seed=0, **kwargs):
        calls.append(np.asarray(features[:]))
        return real_fit_pca(features, n_components, seed=seed, **kwargs)

    monkeypatch.setattr(probe, "fit_pca", spy)
    # Shifting the test features must not move the PCA basis (it would if test rows entered the fit).
    linear_probe(train_X, train_Y, test_X + 1e3, test_Y, n_components=10)
    assert len(calls) == 1
    seen = calls[0]
    assert seen.shape == train_X.shape
    standardised = (train_X - train_X.mean(axis=0)) / train_X.std(axis=0)
    np.testing.assert_allclose(seen, standardised, atol=1e-4)


def test_missing_responses():
    train_X, train_Y, test_X, test_Y = _synthetic(seed=3)
    train_Y = train_Y.copy()
    test_Y = test_Y.copy()
    train_Y[:, 1] = np.nan  # all-NaN voxel: not fitted
    train_Y[::7, 0] = np.nan  # some missing trials: imputed, still fitted
    test_Y[::5, 2] = np.nan  # missing test values: left out of r
    result = linear_probe(train_X, train_Y, test_X, test_Y, n_components=20)
    assert not result.fitted[1] and np.isnan(result.r_test[1]) and np.isnan(result.best_alpha[1])
    assert np.all(np.isnan(result.pred_test[:, 1]))
    assert result.fitted[0] and result.r_test[0] > 0.95
    assert result.r_test[2] > 0.95


def test_components_capped_with_warning():
    train_X, train_Y, test_X, test_Y = _synthetic(n_features=12)
    with pytest.warns(UserWarning, match="n_components"):
        result = linear_probe(train_X, train_Y, test_X, test_Y, n_components=100)
    assert result.n_components == 12


def test_incremental_pca_matches_dense_pca():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 30)) @ np.diag(10.0 * 0.6 ** np.arange(30))  # well-separated spectrum
    dense = fit_pca(X, 5)
    incremental = fit_pca(X, 5, batch_size=133)  # 3 batches of 133 + a 1-row tail folded into the last
    assert type(incremental).__name__ == "IncrementalPCA"
    # Same subspace: |cosine| of matching components near 1.
    cos = np.abs(np.sum(dense.components_ * incremental.components_, axis=1))
    assert np.all(cos > 0.99)
    with pytest.warns(UserWarning):
        assert fit_pca(X[:4], 10).n_components_ == 4


def test_feature_scaler_handles_constant_features():
    X = np.column_stack([np.full(10, 7.0), np.arange(10.0)])
    scaler = FeatureScaler.fit(X)
    Z = scaler.transform(X)
    assert np.all(Z[:, 0] == 0) and Z[:, 1].std() == pytest.approx(1.0, rel=1e-6)


def test_torch_backend_agrees_with_numpy():
    pytest.importorskip("torch")
    train_X, train_Y, test_X, test_Y = _synthetic(n_train=120, n_test=60)
    a = linear_probe(train_X, train_Y[:, :12], test_X, test_Y[:, :12], n_components=10)
    b = linear_probe(train_X, train_Y[:, :12], test_X, test_Y[:, :12], n_components=10, backend="torch")
    np.testing.assert_allclose(a.r_test, b.r_test, atol=1e-6)
    from himalaya.backend import get_backend

    assert get_backend().name == "numpy"  # the backend is restored afterwards


def test_bad_inputs():
    train_X, train_Y, test_X, test_Y = _synthetic(n_train=60, n_test=20)
    with pytest.raises(ValueError, match="rows"):
        linear_probe(train_X[:-1], train_Y, test_X, test_Y)
    with pytest.raises(ValueError, match="features"):
        linear_probe(train_X, train_Y, test_X[:, :-1], test_Y)
    with pytest.raises(ValueError, match="backend"):
        linear_probe(train_X, train_Y, test_X, test_Y, n_components=5, backend="jax")
    with pytest.raises(ValueError, match="alphas"):
        linear_probe(train_X, train_Y, test_X, test_Y, alphas=[-1.0])
    bad = test_X.copy()
    bad[0, 0] = np.nan
    with warnings.catch_warnings(), pytest.raises(ValueError, match="finite"):
        warnings.simplefilter("ignore")
        linear_probe(train_X, train_Y, bad, test_Y, n_components=5)


def test_edge_share_counts_positively_scored_voxels_and_warns():
    import pandas as pd

    from afo.probing.benchmark import edge_warning, probe_summary

    n = 40
    table = pd.DataFrame(
        {
            "extractor": "x",
            "dataset": "d",
            "role": "train",
            "subject": ["s1"] * 20 + ["s2"] * 20,
            "voxel": np.arange(n),
            "r_test": 0.3,
            "cv_r2": [0.2] * 30 + [-0.1] * 10,
            # 3 of the 30 positive voxels at an edge (10%); the negative ones at the edge do not count.
            "alpha_at_edge": [True] * 3 + [False] * 27 + [True] * 10,
        }
    )
    summary = probe_summary(table)
    pooled = summary[summary["subject"] == "all"].iloc[0]
    assert pooled["edge_share"] == pytest.approx(3 / 30)
    assert "x on d (10%)" in edge_warning(summary)
    table["alpha_at_edge"] = [False] * 30 + [True] * 10
    assert edge_warning(probe_summary(table)) == ""
