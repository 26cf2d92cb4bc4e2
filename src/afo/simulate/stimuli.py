"""Procedural stimuli and the feature maps that drive the synthetic brain.

Each image is a tinted grey background (sometimes with a faint texture) and 1-4 objects: a shape (the object
"category": disc, square, triangle, bar), a colour from a small palette, a fill (solid, grating or noise
texture), at a random position, size and rotation; later objects occlude earlier ones. So WHERE (contrast at
a position) and WHAT (which category / colour is present) both vary from image to image.

Images are rendered at twice the output size and averaged 2 x 2 (anti-aliasing). While rendering, the
feature maps the voxels read are computed and pooled onto a coarse ``grid x grid`` lattice:

- ``contrast``: luminance gradient energy gx^2 + gy^2 (local contrast energy);
- ``orient_<deg>``: energy of the luminance gradient along 0, 45, 90, 135 deg;
- ``cat_<name>`` / ``col_<name>``: visible coverage of each category / colour (0..1 per cell);
plus per image, position-free "global" features: presence of each category and colour anywhere
(``1 - exp(-visible area fraction / 0.01)``, close to 1 once an object covers more than a few % of the image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.ndimage import zoom

CATEGORIES: tuple[str, ...] = ("disc", "square", "triangle", "bar")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.12),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.92, 0.85, 0.15),
    "white": (0.97, 0.97, 0.97),
}
ORIENTATIONS_DEG: tuple[int, ...] = (0, 45, 90, 135)
FILLS: tuple[str, ...] = ("solid", "grating", "noise")
_FILL_P = (0.5, 0.3, 0.2)
_PRESENCE_SCALE = 0.01  # visible area fraction at which presence reaches 63 %


@dataclass(frozen=True)
class Stimuli:
    """Rendered images, their feature maps and a per-image description.

    images: uint8 [n, size, size, 3]. local: float32 [n, n_local, grid, grid], names in ``local_names``
    (contrast/orientation energies scaled so that the contrast map averages 1 over the whole set).
    global_: float32 [n, n_global] presence of each category then colour, names in ``global_names``.
    table: one row per image: n_objects, background grey level, visible area fraction of each category/colour.
    """

    images: np.ndarray
    local: np.ndarray
    local_names: tuple[str, ...]
    global_: np.ndarray
    global_names: tuple[str, ...]
    table: pd.DataFrame

    def local_index(self, prefix: str) -> np.ndarray:
        """Indices of the local maps whose names start with ``prefix`` (e.g. "orient_", "cat_")."""
        return np.array([i for i, n in enumerate(self.local_names) if n.startswith(prefix)], dtype=int)


def pixel_centres(n: int) -> np.ndarray:
    """u coordinates (grid_sample convention, -1 = left/top edge) of the centres of n cells: [n]."""
    return (np.arange(n) + 0.5) / n * 2.0 - 1.0


def pooling_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] area-weighted averaging of n_in cells onto n_out cells covering the same interval."""
    edges_in = np.linspace(0.0, 1.0, n_in + 1)
    edges_out = np.linspace(0.0, 1.0, n_out + 1)
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    overlap = np.clip(hi - lo, 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _shape_mask(category: str, px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a shape of radius r in its own (rotated) frame px, py."""
    if category == "disc":
        return px**2 + py**2 <= r**2
    if category == "square":
        return (np.abs(px) <= 0.8 * r) & (np.abs(py) <= 0.8 * r)
    if category == "bar":
        return (np.abs(px) <= r) & (np.abs(py) <= 0.22 * r)
    if category == "triangle":  # equilateral: inside three half-planes at inradius r/2
        mask = np.ones(px.shape, dtype=bool)
        for k in range(3):
            a = np.pi / 2 + 2 * np.pi * k / 3
            mask &= px * np.cos(a) + py * np.sin(a) <= 0.5 * r
        return mask
    raise ValueError(f"unknown category {category!r}")


def _texture(fill: str, px: np.ndarray, py: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Luminance modulation in [0.35, 1] of a fill, same shape as px."""
    if fill == "solid":
        return np.ones(px.shape)
    if fill == "grating":
        theta = rng.uniform(0, np.pi)
        cycles = rng.uniform(4.0, 10.0)  # cycles per image width (2 u)
        phase = rng.uniform(0, 2 * np.pi)
        s = np.sin(np.pi * cycles * (px * np.cos(theta) + py * np.sin(theta)) + phase)
        return 0.675 + 0.325 * np.sign(s)
    n = px.shape[0]
    coarse = rng.standard_normal((max(2, n // 12),) * 2)
    fine = zoom(coarse, n / coarse.shape[0], order=1, mode="nearest")[:n, :n]
    return 0.675 + 0.325 * np.tanh(1.5 * fine)


def _render(
    rng: np.random.Generator, size: int, min_objects: int, max_objects: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One image, supersampled 2x then averaged.

    Returns rgb float [size, size, 3] in [0, 1], coverage float [n_categories + n_colours, size, size]
    (visible fraction of each pixel) and a dict describing the image.
    """
    m = 2 * size
    c = pixel_centres(m)
    x, y = np.meshgrid(c, c)  # x along columns (u_x), y along rows (u_y, +1 = bottom)
    grey = rng.uniform(0.3, 0.6)
    rgb = np.empty((m, m, 3))
    rgb[:] = grey + rng.uniform(-0.03, 0.03, size=3)
    if rng.random() < 0.3:  # faint background texture: low contrast energy everywhere
        rgb *= (0.93 + 0.07 * _texture(str(rng.choice(FILLS[1:])), x, y, rng))[..., None]
    owner = np.full((m, m), -1, dtype=np.int16)
    objects = []
    for k in range(int(rng.integers(min_objects, max_objects + 1))):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        cx, cy = rng.uniform(-0.8, 0.8, size=2)
        r = rng.uniform(0.12, 0.4)
        angle = rng.uniform(0, np.pi)
        fill = FILLS[int(rng.choice(len(FILLS), p=_FILL_P))]
        dx, dy = x - cx, y - cy
        px = np.cos(angle) * dx + np.sin(angle) * dy
        py = -np.sin(angle) * dx + np.cos(angle) * dy
        mask = _shape_mask(category, px, py, r)
        lum = _texture(fill, px, py, rng)
        rgb[mask] = np.asarray(COLOURS[colour]) * lum[mask][:, None]
        owner[mask] = k
        objects.append((category, colour))
    names = list(CATEGORIES) + list(COLOURS)
    # 2 x 2 mean: anti-aliased image and fractional visible coverage (slices are cheaper than a reshape-mean).
    quads = [(0, 0), (0, 1), (1, 0), (1, 1)]
    rgb = sum(rgb[a::2, b::2] for a, b in quads) / 4.0
    cover = np.zeros((len(names), size, size))
    for k, (category, colour) in enumerate(objects):
        visible = sum((owner[a::2, b::2] == k).astype(np.float64) for a, b in quads) / 4.0
        cover[names.index(category)] += visible
        cover[names.index(colour)] += visible
    info = {"n_objects": len(objects), "background": grey}
    return np.clip(rgb, 0.0, 1.0), cover, info


def make_stimuli(
    n: int, size: int, grid: int, rng: np.random.Generator, min_objects: int = 1, max_objects: int = 4
) -> Stimuli:
    """Render ``n`` images of ``size`` px and their feature maps pooled on a ``grid x grid`` lattice."""
    pool = pooling_matrix(size, grid)
    thetas = np.deg2rad(ORIENTATIONS_DEG)
    names = list(CATEGORIES) + list(COLOURS)
    local_names = ("contrast", *(f"orient_{d}" for d in ORIENTATIONS_DEG), *(f"cat_{c}" for c in CATEGORIES),
                   *(f"col_{c}" for c in COLOURS))  # fmt: skip
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    local = np.empty((n, len(local_names), grid, grid), dtype=np.float32)
    global_ = np.empty((n, len(names)), dtype=np.float32)
    rows = []
    for i in range(n):
        rgb, cover, info = _render(rng, size, min_objects, max_objects)
        images[i] = np.round(rgb * 255).astype(np.uint8)
        # Features from the quantised image that is written, so that what the model sees drives the brain.
        q = images[i].astype(np.float64) / 255.0
        lum = q @ np.array([0.299, 0.587, 0.114])
        gy, gx = np.gradient(lum)
        maps = [gx**2 + gy**2]
        maps += [(gx * np.cos(t) + gy * np.sin(t)) ** 2 for t in thetas]
        stack = np.concatenate([np.stack(maps), cover])  # [n_local, size, size]
        local[i] = pool @ stack @ pool.T
        area = cover.mean(axis=(1, 2))
        global_[i] = 1.0 - np.exp(-area / _PRESENCE_SCALE)
        rows.append({**info, **{f"area_{nm}": a for nm, a in zip(names, area)}})
    # One scale for all energy maps keeps their ratios (orientation energies sum to 2x contrast energy).
    n_energy = 1 + len(ORIENTATIONS_DEG)
    local[:, :n_energy] /= max(float(local[:, 0].mean()), 1e-12)
    table = pd.DataFrame(rows)
    return Stimuli(images, local, local_names, global_, tuple(names), table)


def subset(own: Stimuli, other: Stimuli, picks: np.ndarray, order: np.ndarray) -> Stimuli:
    """``own``'s images followed by ``other``'s images ``picks``, rearranged by ``order`` (index into that
    concatenation per output position): a set that reuses a few images of another set."""
    images = np.concatenate([own.images, other.images[picks]])[order]
    local = np.concatenate([own.local, other.local[picks]])[order]
    global_ = np.concatenate([own.global_, other.global_[picks]])[order]
    table = pd.concat([own.table, other.table.iloc[picks]], ignore_index=True).iloc[order].reset_index(drop=True)
    return Stimuli(images, local, own.local_names, global_, own.global_names, table)
