"""Probing and benchmark figures (afo.figures.plots): each writes a valid PNG; bad shapes give ValueError."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.cluster.hierarchy import linkage

from afo.figures import plots

PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, expected):
    assert path == expected
    data = expected.read_bytes()
    assert data[:8] == PNG_HEADER
    assert len(data) > 1024
    # Nothing but the figure is left in the folder (the temporary file was renamed).
    assert [p.name for p in expected.parent.iterdir()] == [expected.name]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_retina_map(tmp_path, rng):
    n = 200
    true_u = rng.uniform(-1, 1, size=(n, 2))
    u = np.clip(true_u + 0.1 * rng.normal(size=(n, 2)), -1, 1)
    true_u[::4] = np.nan  # RF centres known for some voxels only
    layer = rng.integers(0, 4, size=n)
    out = tmp_path / "a" / "retina.png"
    _assert_png(plots.plot_retina_map(u, layer, 4, out, "synthetic S1", true_u=true_u), out)
    out2 = tmp_path / "b" / "retina.png"
    _assert_png(plots.plot_retina_map(u, layer, 4, out2, "no truth"), out2)
    with pytest.raises(ValueError, match=r"u must have shape"):
        plots.plot_retina_map(u[:, :1], layer, 4, tmp_path / "x.png", "t")
    with pytest.raises(ValueError, match="layer"):
        plots.plot_retina_map(u, layer + 4, 4, tmp_path / "x.png", "t")
    with pytest.raises(ValueError, match="true_u"):
        plots.plot_retina_map(u, layer, 4, tmp_path / "x.png", "t", true_u=true_u[:-1])


def test_layer_selector(tmp_path, rng):
    n, n_layers = 150, 4
    coords = rng.normal(size=(n, 3)) * [20, 30, 1]
    logits = rng.normal(size=(n, n_layers)) + coords[:, 1:2] / 10 * np.arange(n_layers)
    eta = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    out = tmp_path / "ls.png"
    _assert_png(plots.plot_layer_selector(coords, eta, out, "LayerSelector"), out)
    out2 = tmp_path / "line" / "ls.png"  # a 1-D layout is drawn as weights against position
    line = np.column_stack([np.arange(float(n)), np.zeros(n), np.zeros(n)])
    _assert_png(plots.plot_layer_selector(line, eta, out2, "EEG"), out2)
    with pytest.raises(ValueError, match="eta"):
        plots.plot_layer_selector(coords, eta[:-1], tmp_path / "x.png", "t")
    with pytest.raises(ValueError, match="coords"):
        plots.plot_layer_selector(coords[:, :1], eta, tmp_path / "x.png", "t")


def test_main_axes_pick_the_widest_spread():
    coords = np.column_stack([np.zeros(5), np.arange(5.0), 10 * np.arange(5.0)])
    assert plots._main_axes(coords) == (1, 2)


def test_dendrogram(tmp_path, rng):
    centroids = np.concatenate([rng.normal(loc=m, size=(8, 5)) for m in (0, 6, 12)])
    Z = linkage(centroids, method="ward")
    out = tmp_path / "dendro.png"
    counts = rng.integers(10, 100, size=24)
    _assert_png(plots.plot_dendrogram(Z, 15.0, out, "veROI", leaf_counts=counts), out)
    with pytest.raises(ValueError, match="linkage"):
        plots.plot_dendrogram(Z[:, :3], 1.0, tmp_path / "x.png", "t")
    with pytest.raises(ValueError, match="leaf_counts"):
        plots.plot_dendrogram(Z, 1.0, tmp_path / "x.png", "t", leaf_counts=counts[:-1])


def test_roi_scores(tmp_path):
    table = pd.DataFrame(
        {
            "roi": ["veROI_1", "veROI_2", "veROI_3"],
            "mean_r": [0.5, 0.3, np.nan],
            "sem_r": [0.01, 0.02, np.nan],
            "top1": [0.6, 0.2, 0.05],
            "top5": [0.9, 0.5, 0.2],
            "n_candidates": [100, 100, 100],
        }
    )
    out = tmp_path / "roi.png"
    _assert_png(plots.plot_roi_scores(table, out), out)
    with pytest.raises(ValueError, match="top5"):
        plots.plot_roi_scores(table.drop(columns="top5"), tmp_path / "x.png")


def test_violins(tmp_path, rng):
    rows = []
    for dataset in ("NSD", "BOLD5000"):
        for model, shift in (("dinov2", 0.2), ("afo", 0.3)):
            rows += [{"model": model, "dataset": dataset, "r": r} for r in shift + 0.1 * rng.normal(size=60)]
    rows.append({"model": "tiny", "dataset": "NSD", "r": 0.1})  # a single value: drawn as a point
    rows.append({"model": "afo", "dataset": "NSD", "r": np.nan})
    out = tmp_path / "violins.png"
    _assert_png(plots.plot_violins(pd.DataFrame(rows), out), out)
    with pytest.raises(ValueError, match="columns"):
        plots.plot_violins(pd.DataFrame({"model": ["a"], "r": [0.1]}), tmp_path / "x.png")


def test_retrievals(tmp_path, rng):
    queries = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    retrieved = rng.integers(0, 256, size=(2, 3, 16, 16, 3), dtype=np.uint8)
    retrieved[0, 0] = queries[0]  # a correct retrieval (framed green)
    out = tmp_path / "retrievals.png"
    _assert_png(plots.plot_retrievals(queries, retrieved, out, titles=["all voxels", "veROI 5"]), out)
    with pytest.raises(ValueError, match="retrieved"):
        plots.plot_retrievals(queries, retrieved[:1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="uint8"):
        plots.plot_retrievals(queries.astype(float), retrieved, tmp_path / "x.png")
    with pytest.raises(ValueError, match="titles"):
        plots.plot_retrievals(queries, retrieved, tmp_path / "x.png", titles=["one"])


def test_brain_scores(tmp_path, rng):
    coords = rng.normal(size=(120, 3)) * 30
    values = rng.uniform(-0.1, 0.8, size=120)
    values[:5] = np.nan
    out = tmp_path / "scores.png"
    _assert_png(plots.plot_brain_scores(coords, values, out, "test r", "magma"), out)
    out2 = tmp_path / "labels" / "eeg.png"  # 2-D layout, categorical colours
    labels = rng.integers(0, 5, size=120).astype(float)
    _assert_png(plots.plot_brain_scores(coords[:, :2], labels, out2, "veROI", "tab10"), out2)
    out3 = tmp_path / "line" / "eeg.png"  # EEG channels on dummy sequential coordinates: value vs position
    line = np.column_stack([np.arange(120.0), np.zeros(120), np.zeros(120)])
    _assert_png(plots.plot_brain_scores(line, values, out3, "EEG r", label="r"), out3)
    with pytest.raises(ValueError, match="values"):
        plots.plot_brain_scores(coords, values[:-1], tmp_path / "x.png", "t")


def test_layer_colours_are_consistent():
    cmap_a, norm_a = plots.layer_colors(4)
    cmap_b, _ = plots.layer_colors(4)
    np.testing.assert_array_equal(cmap_a(norm_a(np.arange(4))), cmap_b(norm_a(np.arange(4))))
    with pytest.raises(ValueError):
        plots.layer_colors(0)
