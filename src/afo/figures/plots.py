"""Probing and benchmark figures (paper Figures 1, 4-9) from plain arrays and DataFrames.

Every function takes arrays / DataFrames and an output path, writes one PNG (``DPI`` dots per inch) and
returns the path. Files are written atomically (temporary file in the same folder, then rename), so a
Snakemake job that dies mid-write never leaves a truncated figure behind.

Figures are drawn with matplotlib's object-oriented API (``matplotlib.figure.Figure`` with the Agg canvas),
never through ``pyplot``: no global figure registry, no backend switch, nothing to close, safe in workers.

Conventions shared by all figures:

- layers use one colour map everywhere (:func:`layer_colors`, viridis: dark = shallow layer 0, yellow = deepest);
- RetinaGrid coordinates follow grid_sample / image conventions (docs/design.md): u_x -1 = left, +1 = right;
  u_y -1 = top, +1 = bottom, so the y axis is drawn downwards like an image;
- NaN values are left out of scatter plots (and counted in the title) rather than silently drawn as 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, Colormap, ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from afo.io import atomic_path
from afo.metrics import pearson_r

DPI = 120
LAYER_CMAP = "viridis"
AXIS_NAMES = ("x", "y", "z")


# --------------------------------------------------------------------------------------------- helpers


def layer_colors(n_layers: int) -> tuple[ListedColormap, BoundaryNorm]:
    """Discrete colour map and norm for layer indices 0..n_layers-1 (the same colours in every figure)."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    import matplotlib

    base = matplotlib.colormaps[LAYER_CMAP]
    colours = base(np.linspace(0.0, 1.0, n_layers)) if n_layers > 1 else base([0.5])
    cmap = ListedColormap(colours, name=f"layers{n_layers}")
    norm = BoundaryNorm(np.arange(-0.5, n_layers + 0.5, 1.0), n_layers)
    return cmap, norm


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: rendering never depends on the pyplot backend
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI)
    return path


def _marker_size(n: int) -> float:
    """Scatter marker area that keeps 100 and 300,000 points readable."""
    return float(np.clip(3.0e4 / max(n, 1), 0.3, 25.0))


def _as_2d(name: str, a, n_cols: int | Sequence[int], n_rows: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    allowed = (n_cols,) if isinstance(n_cols, int) else tuple(n_cols)
    if a.ndim != 2 or a.shape[1] not in allowed:
        want = " or ".join(f"[N, {c}]" for c in allowed)
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    if n_rows is not None and a.shape[0] != n_rows:
        raise ValueError(f"{name} has {a.shape[0]} rows, expected {n_rows}")
    return a


def _as_1d(name: str, a, n: int) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    return a


def _require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"{what}: table must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what}: table lacks columns {missing} (has {list(table.columns)})")


def _main_axes(coords: np.ndarray) -> tuple[int, int]:
    """The two coordinate axes with the largest spread (the 'main' view of a 3-D voxel layout)."""
    with np.errstate(invalid="ignore"):
        spread = np.nan_to_num(np.nanstd(coords, axis=0), nan=0.0) if coords.shape[0] else np.zeros(coords.shape[1])
    first, second = sorted(np.argsort(-spread, kind="stable")[:2])
    return int(first), int(second)


def _equal_aspect_if_sensible(ax, xs: np.ndarray, ys: np.ndarray) -> None:
    """Equal aspect for physical coordinates, unless the layout is a thin line (e.g. EEG dummy coordinates)."""
    if xs.size == 0:
        return
    wx, wy = np.ptp(xs), np.ptp(ys)
    if wx > 0 and wy > 0 and max(wx, wy) / min(wx, wy) < 10:
        ax.set_aspect("equal", adjustable="datalim")


# --------------------------------------------------------------------------------------------- figures


def plot_retina_map(
    u: np.ndarray,
    layer: np.ndarray,
    n_layers: int,
    path: str | os.PathLike,
    title: str,
    true_u: np.ndarray | None = None,
    visual_angle: float | None = None,
) -> Path:
    """RetinaMap (paper Figure 4): each voxel's RetinaGrid position u, coloured by its selected layer.

    Args:
        u: [N, 2] learned (u_x, u_y) in [-1, 1], grid_sample convention (-1 = left / top).
        layer: [N] int, argmax of the LayerSelector eta (0 = shallowest).
        n_layers: number of backbone layers L (fixes the colours).
        path: output PNG.
        title: figure title (e.g. dataset / subject / model).
        true_u: optional [N, 2] true receptive-field centres in the same convention (NaN where unknown,
            e.g. for voxels outside the simulated early areas); adds a learned-vs-true panel with Pearson r.
        visual_angle: the dataset's full stimulus width in degrees, if known: adds axes in degrees of visual
            angle from fixation (top: x, right = +; right: y, up = +; :mod:`afo.evaluation.retinotopy`).
    """
    u = _as_2d("u", u, 2).astype(np.float64)
    n = u.shape[0]
    layer = _as_1d("layer", layer, n)
    if n and not np.issubdtype(layer.dtype, np.integer):
        raise ValueError(f"layer must be integers, got {layer.dtype}")
    if n and (layer.min() < 0 or layer.max() >= n_layers):
        raise ValueError(f"layer values must lie in [0, {n_layers}), got [{layer.min()}, {layer.max()}]")
    if true_u is not None:
        true_u = _as_2d("true_u", true_u, 2, n_rows=n).astype(np.float64)
    cmap, norm = layer_colors(n_layers)

    fig = _figure(11.0 if true_u is not None else 6.0, 5.2)
    axes = fig.subplots(1, 2 if true_u is not None else 1, squeeze=False)[0]
    ax = axes[0]
    ok = np.all(np.isfinite(u), axis=1)
    # A fixed shuffle of the drawing order: otherwise the last layer drawn hides the others where they overlap.
    draw = np.random.default_rng(0).permutation(np.flatnonzero(ok))
    sc = ax.scatter(
        u[draw, 0], u[draw, 1], c=layer[draw], cmap=cmap, norm=norm, s=_marker_size(n), linewidths=0, rasterized=True
    )
    ax.add_patch(Rectangle((-1, -1), 2, 2, fill=False, edgecolor="0.3", linewidth=1.0))
    ax.set_xlim(-1.08, 1.08)
    ax.set_ylim(1.08, -1.08)  # image convention: -1 (top) at the top
    ax.set_aspect("equal")
    ax.set_xlabel("u_x  (-1 = left, +1 = right)")
    ax.set_ylabel("u_y  (-1 = top, +1 = bottom)")
    dropped = f", {n - int(ok.sum())} without u" if ok.sum() < n else ""
    ax.set_title(f"RetinaMap: {int(ok.sum())} voxels{dropped}")
    if visual_angle is not None:
        half = float(visual_angle) / 2.0
        top = ax.secondary_xaxis("top", functions=(lambda u: u * half, lambda d: d / half))
        top.set_xlabel("x (deg of visual angle, + = right)")
        # y in degrees points up: u_y = -1 (image top) is +visual_angle/2
        side = ax.secondary_yaxis("right", functions=(lambda u: -u * half, lambda d: -d / half))
        side.set_ylabel("y (deg, + = up)")
    cbar = fig.colorbar(sc, ax=ax, ticks=np.arange(n_layers), shrink=0.85)
    cbar.set_label("layer (argmax eta, 0 = shallowest)")

    if true_u is not None:
        ax2 = axes[1]
        r = [float(pearson_r(u[:, i], true_u[:, i])) for i in range(2)]
        for i, (name, colour) in enumerate((("u_x", "tab:blue"), ("u_y", "tab:orange"))):
            both = np.isfinite(u[:, i]) & np.isfinite(true_u[:, i])
            ax2.scatter(
                true_u[both, i],
                u[both, i],
                s=_marker_size(n),
                color=colour,
                alpha=0.6,
                linewidths=0,
                label=f"{name} (r = {r[i]:.2f})",
                rasterized=True,
            )
        ax2.plot([-1, 1], [-1, 1], "k--", linewidth=0.8, label="identity")
        ax2.set_xlim(-1.08, 1.08)
        ax2.set_ylim(-1.08, 1.08)
        ax2.set_aspect("equal")
        ax2.set_xlabel("true RF centre")
        ax2.set_ylabel("learned u")
        ax2.set_title(f"learned vs true: r_x = {r[0]:.2f}, r_y = {r[1]:.2f}")
        ax2.legend(loc="upper left", fontsize=8, markerscale=3)
    fig.suptitle(title)
    return _save(fig, path)


def plot_layer_selector(coords: np.ndarray, eta: np.ndarray, path: str | os.PathLike, title: str) -> Path:
    """LayerSelector over voxel coordinates (paper Figure 5).

    The main panel shows the expected layer sum_l l * eta_l over the two coordinate axes with the largest
    spread; for L <= 12 a small panel per layer shows that layer's weight eta_l (0..1).

    Args:
        coords: [N, 3] voxel coordinates (or [N, 2]).
        eta: [N, L] LayerSelector weights (rows sum to 1).
        path: output PNG.
        title: figure title.
    """
    coords = _as_2d("coords", coords, (2, 3)).astype(np.float64)
    n = coords.shape[0]
    eta = np.asarray(eta, dtype=np.float64)
    if eta.ndim != 2 or eta.shape[0] != n or eta.shape[1] < 1:
        raise ValueError(f"eta must have shape [N={n}, L>=1], got {eta.shape}")
    n_layers = eta.shape[1]
    a, b = _main_axes(coords)
    xs, ys = coords[:, a], coords[:, b]
    expected = eta @ np.arange(n_layers, dtype=np.float64)
    ok = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(expected)

    small = n_layers <= 12
    ncols = min(n_layers, 4) if small else 1
    nrows_small = math.ceil(n_layers / ncols) if small else 0
    wx = float(np.ptp(xs[ok])) if ok.any() else 1.0
    wy = float(np.ptp(ys[ok])) if ok.any() else 1.0
    # A layout with a single spread axis (EEG channels on dummy sequential coordinates) is drawn as value
    # against position: a scatter over a flat second axis would be a line of overlapping dots.
    line = wx > 0 and wy <= 1e-9 * wx
    if line:
        aspect = 2.0
    else:  # size the figure after the layout's aspect ratio: equal-aspect panels then fill their space
        aspect = float(np.clip(wx / wy, 0.5, 2.5)) if wx > 0 and wy > 0 else 1.0
    main_h = 4.5
    width = max(main_h * aspect + 1.6, 2.2 * ncols + 1.2)
    small_h = float(np.clip((width - 1.2) / ncols / aspect, 1.2, 2.6))
    fig = _figure(width, main_h + 0.8 + (small_h + 0.4) * nrows_small)
    grid = fig.add_gridspec(1 + nrows_small, ncols, height_ratios=[main_h] + [small_h] * nrows_small)
    ax = fig.add_subplot(grid[0, :])
    size = _marker_size(n)
    main_y = expected if line else ys
    sc = ax.scatter(
        xs[ok],
        main_y[ok],
        c=expected[ok],
        cmap=LAYER_CMAP,
        vmin=0,
        vmax=max(n_layers - 1, 1),
        s=size,
        linewidths=0,
        rasterized=True,
    )
    ax.set_xlabel(AXIS_NAMES[a])
    if line:
        ax.set_ylabel("expected layer")
        ax.set_ylim(-0.2, max(n_layers - 1, 1) + 0.2)
    else:
        ax.set_ylabel(AXIS_NAMES[b])
        _equal_aspect_if_sensible(ax, xs[ok], ys[ok])
    ax.set_title(f"expected layer (sum_l l * eta_l), {int(ok.sum())} voxels")
    cbar = fig.colorbar(sc, ax=ax, shrink=0.9)
    cbar.set_label("expected layer (0 = shallowest)")
    if small:
        small_axes = []
        for l in range(n_layers):
            axl = fig.add_subplot(grid[1 + l // ncols, l % ncols])
            small_axes.append(axl)
            scl = axl.scatter(
                xs[ok],
                (eta[:, l] if line else ys)[ok],
                c=eta[ok, l],
                cmap="magma",
                vmin=0.0,
                vmax=1.0,
                s=size / 2,
                linewidths=0,
                rasterized=True,
            )
            axl.set_title(f"eta_{l} (layer {l})", fontsize=9)
            axl.set_xticks([])
            if line:
                axl.set_ylim(-0.05, 1.05)
                if l % ncols:
                    axl.set_yticklabels([])
            else:
                axl.set_yticks([])
                _equal_aspect_if_sensible(axl, xs[ok], ys[ok])
        fig.colorbar(scl, ax=small_axes, shrink=0.8, label="layer weight eta")
    fig.suptitle(title)
    return _save(fig, path)


def plot_dendrogram(
    linkage: np.ndarray,
    cut_height: float,
    path: str | os.PathLike,
    title: str,
    leaf_counts: np.ndarray | None = None,
) -> Path:
    """veROI dendrogram with its cut as a dashed line (paper Figure 6).

    Args:
        linkage: [n_leaves - 1, 4] scipy linkage matrix (Ward on the k-means centroids).
        cut_height: height at which the tree is cut into veROIs; clusters below it are coloured.
        path: output PNG.
        title: figure title.
        leaf_counts: optional [n_leaves] voxels per leaf (k-means cluster sizes): leaves are labelled with
            them when there are at most 60 leaves; the title always gives the voxel total.
    """
    from scipy.cluster.hierarchy import dendrogram, fcluster, is_valid_linkage

    Z = np.asarray(linkage, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[1] != 4 or Z.shape[0] < 1 or not is_valid_linkage(Z):
        raise ValueError(f"linkage must be a valid scipy linkage matrix [n_leaves - 1, 4], got shape {Z.shape}")
    n_leaves = Z.shape[0] + 1
    if not np.isfinite(cut_height):
        raise ValueError(f"cut_height must be finite, got {cut_height}")
    if leaf_counts is not None:
        leaf_counts = _as_1d("leaf_counts", leaf_counts, n_leaves)
    n_rois = int(np.unique(fcluster(Z, t=cut_height, criterion="distance")).size)

    fig = _figure(min(4.0 + 0.18 * n_leaves, 16.0), 5.0)
    ax = fig.add_subplot()
    labelled = leaf_counts is not None and n_leaves <= 60
    dendrogram(
        Z,
        ax=ax,
        color_threshold=cut_height,
        above_threshold_color="0.55",
        no_labels=not labelled,
        labels=[str(int(c)) for c in leaf_counts] if labelled else None,
        leaf_rotation=90,
        leaf_font_size=7,
    )
    ax.axhline(cut_height, color="k", linestyle="--", linewidth=1.2, label=f"cut at {cut_height:.3g}")
    ax.set_ylabel("Ward linkage distance")
    ax.set_xlabel("leaves (k-means clusters" + (", labelled by voxel count)" if labelled else ")"))
    ax.legend(loc="upper right")
    total = f", {int(np.sum(leaf_counts))} voxels" if leaf_counts is not None else ""
    ax.set_title(f"{title}\n{n_rois} veROIs from {n_leaves} clusters{total}")
    return _save(fig, path)


def plot_roi_scores(
    table: pd.DataFrame,
    path: str | os.PathLike,
    title: str = "Encoding and retrieval per ROI",
) -> Path:
    """Per-ROI encoding and retrieval scores (paper Figure 8).

    Args:
        table: one row per ROI with columns roi, mean_r, sem_r (encoding: mean and standard error of the
            voxels' test r), top1, top5 (retrieval accuracy). An optional n_candidates column adds the chance
            levels 1/n and 5/n as dotted lines. NaN entries leave their bar out.
        path: output PNG.
        title: figure title.
    """
    _require_columns(table, ["roi", "mean_r", "sem_r", "top1", "top5"], "plot_roi_scores")
    rois = [str(x) for x in table["roi"]]
    x = np.arange(len(rois), dtype=np.float64)
    width = 0.27
    fig = _figure(max(5.0, 1.0 + 0.7 * len(rois)), 4.5)
    ax = fig.add_subplot()
    values = {
        c: pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=np.float64)
        for c in ("mean_r", "sem_r", "top1", "top5")
    }
    # Colours as in the paper: retrieval blue and orange, encoding green with black standard-error bars.
    ax.bar(x - width, values["top1"], width, color="tab:blue", label="retrieval top-1")
    ax.bar(x, values["top5"], width, color="tab:orange", label="retrieval top-5")
    ax.bar(
        x + width,
        values["mean_r"],
        width,
        color="tab:green",
        label="encoding mean r",
        yerr=np.nan_to_num(values["sem_r"]),
        ecolor="black",
        capsize=2,
    )
    if "n_candidates" in table.columns:
        n_cand = pd.to_numeric(table["n_candidates"], errors="coerce").dropna().unique()
        if n_cand.size == 1 and n_cand[0] > 0:
            ax.axhline(1.0 / n_cand[0], color="tab:blue", linestyle=":", linewidth=1, label="chance top-1")
            ax.axhline(min(5.0 / n_cand[0], 1.0), color="tab:orange", linestyle=":", linewidth=1, label="chance top-5")
    ax.set_xticks(x, rois, rotation=45 if len(rois) > 8 else 0, ha="right" if len(rois) > 8 else "center")
    ax.set_xlabel("ROI")
    ax.set_ylabel("accuracy / Pearson r")
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] + [np.zeros(1)])
    ax.set_ylim(min(0.0, finite.min() - 0.05), max(1.0, finite.max() + 0.05))
    ax.legend(fontsize=8, ncols=2)
    ax.set_title(title)
    return _save(fig, path)


def plot_violins(table: pd.DataFrame, path: str | os.PathLike, title: str = "Linear probing: test r per voxel") -> Path:
    """Violin plots of per-voxel r per feature extractor, one panel per dataset (paper Figure 1).

    Args:
        table: long format, one row per voxel and model: columns model, dataset, r. Models and datasets keep
            their order of first appearance; NaN r are left out; groups with fewer than 2 distinct values are
            drawn as points (a violin needs a spread).
        path: output PNG.
        title: figure title.
    """
    _require_columns(table, ["model", "dataset", "r"], "plot_violins")
    models = list(dict.fromkeys(table["model"].astype(str)))
    datasets = list(dict.fromkeys(table["dataset"].astype(str)))
    if not models:
        raise ValueError("plot_violins: table is empty")
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    fig = _figure(max(4.0, 1.2 + 1.0 * len(models)) * len(datasets), 4.8)
    axes = fig.subplots(1, len(datasets), sharey=True, squeeze=False)[0]
    r_all = pd.to_numeric(table["r"], errors="coerce")
    model_col = table["model"].astype(str)
    dataset_col = table["dataset"].astype(str)
    for ax, dataset in zip(axes, datasets):
        labels = []
        for i, model in enumerate(models):
            values = r_all[(dataset_col == dataset) & (model_col == model)].to_numpy(dtype=np.float64)
            values = values[np.isfinite(values)]
            colour = palette(i % 10)
            if np.unique(values).size >= 2:
                parts = ax.violinplot(values, positions=[i], widths=0.8, showmedians=True, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor(colour)
                    body.set_edgecolor("black")
                    body.set_alpha(0.75)
                parts["cmedians"].set_color("black")
            elif values.size:
                ax.scatter(np.full(values.size, i), values, color=colour, edgecolor="black", zorder=3)
            median = f"{np.median(values):.3f}" if values.size else "n/a"
            labels.append(f"{model}\nmedian {median}\nn={values.size}")
        ax.axhline(0.0, color="0.6", linewidth=0.8)
        ax.set_xticks(np.arange(len(models)), labels, fontsize=8)
        ax.set_title(dataset)
        ax.set_xlabel("feature extractor")
    axes[0].set_ylabel("test Pearson r per voxel")
    fig.suptitle(title)
    return _save(fig, path)


def plot_retrievals(
    query_images: np.ndarray,
    retrieved: np.ndarray,
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
) -> Path:
    """Image retrieval grid (paper Figures 7 and 9): per row the true image, then its top-K retrieved images.

    A retrieved image identical to the row's true image is framed in green.

    Args:
        query_images: [Q, H, W, 3] uint8, the images the measured responses were recorded for.
        retrieved: [Q, K, H', W', 3] uint8, the top-K candidates per query, best first.
        path: output PNG.
        titles: optional Q row labels (e.g. "trial 12, veROI 5").
    """
    query_images = np.asarray(query_images)
    retrieved = np.asarray(retrieved)
    if query_images.ndim != 4 or query_images.shape[-1] != 3:
        raise ValueError(f"query_images must have shape [Q, H, W, 3], got {query_images.shape}")
    if retrieved.ndim != 5 or retrieved.shape[-1] != 3 or retrieved.shape[0] != query_images.shape[0]:
        raise ValueError(f"retrieved must have shape [Q={query_images.shape[0]}, K, H, W, 3], got {retrieved.shape}")
    for name, arr in (("query_images", query_images), ("retrieved", retrieved)):
        if arr.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 RGB, got {arr.dtype}")
    n_q, k = retrieved.shape[:2]
    if n_q == 0 or k == 0:
        raise ValueError(f"need at least one query and one retrieved image, got Q={n_q}, K={k}")
    if titles is not None and len(titles) != n_q:
        raise ValueError(f"titles must have one entry per query ({n_q}), got {len(titles)}")

    fig = _figure(1.6 * (k + 1) + 0.6, 1.7 * n_q + 0.4)
    axes = fig.subplots(n_q, k + 1, squeeze=False)
    for q in range(n_q):
        for j in range(k + 1):
            ax = axes[q, j]
            image = query_images[q] if j == 0 else retrieved[q, j - 1]
            ax.imshow(image, interpolation="antialiased")
            # Ticks off but the frame kept (axis("off") would also hide the row label and the green frame).
            ax.set_xticks([])
            ax.set_yticks([])
            if j > 0 and image.shape == query_images[q].shape and np.array_equal(image, query_images[q]):
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:green")
                    spine.set_linewidth(3)
            if q == 0:
                ax.set_title("true image" if j == 0 else f"top {j}", fontsize=9)
        if titles is not None:
            axes[q, 0].set_ylabel(str(titles[q]), fontsize=8)
    return _save(fig, path)


def plot_brain_scores(
    coords: np.ndarray,
    values: np.ndarray,
    path: str | os.PathLike,
    title: str,
    cmap: str | Colormap = "viridis",
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    label: str = "value",
) -> Path:
    """A per-voxel value over voxel coordinates, for subjects that are not volumetric (surface, EEG, MEG).

    3-D coordinates are drawn as three orthogonal projections (x-y, x-z, y-z; axes without spread are left
    out); points are drawn in order of increasing value so the highest values stay visible where projections
    overlap. NaN values are drawn as small light-grey points underneath. A layout that varies along one axis
    only (EEG channels on dummy sequential coordinates) is drawn as value against position.

    Args:
        coords: [N, 3] (or [N, 2]) voxel coordinates.
        values: [N] per-voxel value (score, label, u_x, ...).
        path: output PNG.
        title: figure title.
        cmap: matplotlib colour map (name or object); e.g. "tab20" for ROI labels.
        vmin, vmax: colour range; default the finite min / max.
        label: colour-bar label.
    """
    coords = _as_2d("coords", coords, (2, 3)).astype(np.float64)
    n = coords.shape[0]
    values = _as_1d("values", values, n).astype(np.float64)
    finite = np.isfinite(values) & np.all(np.isfinite(coords), axis=1)
    missing = ~np.isfinite(values) & np.all(np.isfinite(coords), axis=1)
    if vmin is None:
        vmin = float(values[finite].min()) if finite.any() else 0.0
    if vmax is None:
        vmax = float(values[finite].max()) if finite.any() else 1.0
    norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-9)
    placed = np.all(np.isfinite(coords), axis=1)
    spread = np.ptp(coords[placed], axis=0) if placed.any() else np.zeros(coords.shape[1])
    # Axes along which the voxels do not vary (a 2-D sheet, EEG channels on a line) are left out of the views.
    active = [i for i in range(coords.shape[1]) if spread[i] > 1e-9 * max(spread.max(), 1e-300)]
    order = np.flatnonzero(finite)[np.argsort(values[finite], kind="stable")]
    size = _marker_size(n)
    if len(active) <= 1:
        # One spread axis: draw value against position instead of a line of overlapping dots.
        a = active[0] if active else 0
        fig = _figure(8.0, 4.0)
        ax = fig.add_subplot()
        sc = ax.scatter(
            coords[order, a],
            values[order],
            c=values[order],
            cmap=cmap,
            norm=norm,
            s=size,
            linewidths=0,
            rasterized=True,
        )
        ax.set_xlabel(AXIS_NAMES[a])
        ax.set_ylabel(label)
        axes = [ax]
    else:
        pairs = [(a, b) for i, a in enumerate(active) for b in active[i + 1 :]]
        fig = _figure(4.3 * len(pairs) + 1.0, 4.4)
        axes = list(fig.subplots(1, len(pairs), squeeze=False)[0])
        for ax, (a, b) in zip(axes, pairs):
            if missing.any():
                ax.scatter(
                    coords[missing, a], coords[missing, b], s=size / 2, color="0.85", linewidths=0, rasterized=True
                )
            sc = ax.scatter(
                coords[order, a],
                coords[order, b],
                c=values[order],
                cmap=cmap,
                norm=norm,
                s=size,
                linewidths=0,
                rasterized=True,
            )
            ax.set_xlabel(AXIS_NAMES[a])
            ax.set_ylabel(AXIS_NAMES[b])
            _equal_aspect_if_sensible(ax, coords[finite, a], coords[finite, b])
    fig.colorbar(sc, ax=axes, shrink=0.85, label=label)
    extra = f" ({int(missing.sum())} NaN in grey)" if missing.any() else ""
    fig.suptitle(f"{title}{extra}")
    return _save(fig, path)
