"""RetinaMapper positions in degrees of visual angle: eccentricity and polar angle, as retinotopy reports them.

u = (u_x, u_y) is in the grid_sample convention (docs/design.md): -1 = left / top edge of the image, +1 = right /
bottom edge. A dataset whose (square, centred) stimulus is ``visual_angle`` degrees wide puts the image edge at
``visual_angle / 2`` degrees from fixation, so in degrees, with y pointing up as in the visual field::

    x_deg = u_x * visual_angle / 2        y_deg = -u_y * visual_angle / 2
    ecc_deg = hypot(x_deg, y_deg)          angle_deg = atan2(y_deg, x_deg) in [0, 360)

angle_deg follows NSD's pRF maps: 0 = right horizontal meridian, 90 = upper vertical meridian, 180 = left,
270 = lower (counter-clockwise in the visual field). The sign flip of y is the whole point: image "up" is
u_y = -1, i.e. angle 90.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def u_to_degrees(u_x: np.ndarray, u_y: np.ndarray, visual_angle: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(ecc_deg [N], angle_deg [N]) of RetinaGrid positions [N] each; all NaN when ``visual_angle`` is None."""
    u_x, u_y = np.asarray(u_x, dtype=np.float64), np.asarray(u_y, dtype=np.float64)
    if visual_angle is None:
        nan = np.full(u_x.shape, np.nan)
        return nan, nan.copy()
    half = float(visual_angle) / 2.0
    x, y = u_x * half, -u_y * half
    return np.hypot(x, y), np.degrees(np.arctan2(y, x)) % 360.0


def degrees_to_u(ecc_deg: np.ndarray, angle_deg: np.ndarray, visual_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`u_to_degrees`: (u_x [N], u_y [N]) of eccentricities and polar angles in degrees."""
    theta = np.radians(np.asarray(angle_deg, dtype=np.float64))
    r = np.asarray(ecc_deg, dtype=np.float64) / (float(visual_angle) / 2.0)
    return r * np.cos(theta), -r * np.sin(theta)


def add_degrees(voxels: pd.DataFrame, visual_angles: Mapping[str, float | None]) -> pd.DataFrame:
    """``voxels`` (columns dataset, u_x, u_y) with ecc_deg and angle_deg, empty for datasets without a visual angle."""
    ecc = np.full(len(voxels), np.nan)
    angle = np.full(len(voxels), np.nan)
    for dataset, degrees in visual_angles.items():
        rows = (voxels["dataset"] == dataset).to_numpy()
        if degrees is not None and rows.any():
            ecc[rows], angle[rows] = u_to_degrees(
                voxels["u_x"].to_numpy()[rows], voxels["u_y"].to_numpy()[rows], degrees
            )
    return voxels.assign(ecc_deg=ecc, angle_deg=angle)
