"""Interactive viewer pages: one self-contained HTML file per model, dataset and subject.

Each page shows a subject's per-voxel results on the brain with a value readout on hover, one map at a time
(a menu switches between them): test r, r_test_norm, the RetinaMap's eccentricity and polar angle (degrees where
the dataset has a visual angle, else image units: u = 1 is half the image width) and the LayerSelector's depth
(the ``layer`` column of voxels.csv, 0 = shallowest). What the brain looks like depends on the store:

- **fsaverage surfaces**: a rotatable mesh: the stored vertex positions (the adapter's ``fsaverage_surface``,
  hemispheres side by side as the store has them) and the triangles of that surface file whose three corners
  are all voxels; without the surface file, the vertices as points;
- **volumes** (a volume grid and affine in the store): axial slices of the voxels' bounding box as heatmaps, a
  slider over the slices;
- **EEG/MEG** (the store's modality): a table of the sensors' values (one row per channel and time point);
- **anything else** (the synthetic demo's coordinates, CIFTI grayordinates): the voxel coordinates as a
  rotatable 3-D scatter.

Built with plotly, its JavaScript embedded (``include_plotlyjs=True``), so a page opens offline and from
a report. Meshes are drawn with ambient light only, so a vertex shows exactly its value's colour.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from afo.io import atomic_path

# A view from above (hemispheres side by side along x, anterior up), without perspective
_SCENE = dict(aspectmode="data", camera=dict(eye=dict(x=0, y=0, z=2.2), up=dict(x=0, y=1, z=0)))
# Ambient light only: shading would change a vertex's colour away from its value's (what the browser test checks).
_FLAT = dict(ambient=1.0, diffuse=0.0, specular=0.0, roughness=1.0, fresnel=0.0)


@dataclass(frozen=True)
class ViewMap:
    """One map of a page: its values per voxel and how they are coloured."""

    name: str
    label: str
    values: np.ndarray
    colorscale: str
    cmin: float
    cmax: float


def _range(values: np.ndarray, low: float | None = None, high: float | None = None) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    lo = lo if low is None else min(low, lo)
    hi = hi if high is None else high
    return lo, hi if hi > lo else lo + 1.0


def view_maps(frame: pd.DataFrame) -> list[ViewMap]:
    """The maps of one subject's rows of voxels.csv (columns r_test, r_test_norm, u_x, u_y, layer; ecc_deg and
    angle_deg where the dataset has a visual angle)."""

    def column(name: str) -> np.ndarray:
        if name not in frame:
            return np.full(len(frame), np.nan)
        return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)

    degrees = np.isfinite(column("ecc_deg")).any()
    if degrees:
        ecc, angle, unit = column("ecc_deg"), column("angle_deg"), "deg"
    else:
        # The angle convention of afo.evaluation.retinotopy (0 right, 90 up; u_y grows downwards), in image units
        u_x, u_y = column("u_x"), column("u_y")
        ecc, angle, unit = np.hypot(u_x, u_y), np.degrees(np.arctan2(-u_y, u_x)) % 360.0, "image half-widths"
    r, r_norm, layer = column("r_test"), column("r_test_norm"), column("layer")
    return [
        ViewMap("r_test", "test Pearson r", r, "Viridis", *_range(r, low=0.0)),
        ViewMap("r_test_norm", "test r / noise ceiling", r_norm, "Viridis", *_range(r_norm, low=0.0)),
        ViewMap("eccentricity", f"RF eccentricity ({unit})", ecc, "Magma", *_range(ecc, low=0.0)),
        ViewMap("angle", "RF polar angle (deg; 0 right, 90 up)", angle, "Twilight", 0.0, 360.0),
        ViewMap("layer", "LayerSelector depth (layer, 0 = shallowest)", layer, "Viridis", *_range(layer, low=0.0)),
    ]


def _text(voxel: np.ndarray, m: ViewMap) -> list[str]:
    return [f"voxel {v}: {m.label} = {x:.4g}" for v, x in zip(voxel.tolist(), m.values.tolist())]


def _colour(m: ViewMap, bound: str = "c") -> dict[str, Any]:
    """Colour scale, range and colour bar of a map (``bound`` "z": a heatmap's zmin/zmax)."""
    return {
        "colorscale": m.colorscale,
        f"{bound}min": m.cmin,
        f"{bound}max": m.cmax,
        "colorbar": dict(title=dict(text=m.label)),
    }


def _title(text: str) -> dict:
    return dict(text=text, x=0.5, xanchor="center")  # centred: the map menu sits top left


def _menu(buttons: list[dict]) -> list[dict]:
    return [dict(buttons=buttons, direction="down", x=0.0, xanchor="left", y=1.12, yanchor="top")]


def mesh_figure(coords: np.ndarray, faces: np.ndarray, voxel: np.ndarray, maps: list[ViewMap], title: str):
    """A Mesh3d of the voxels' vertices ``coords`` [N, 3] and triangles ``faces`` [F, 3] (rows of coords), one
    intensity per map (the menu restyles the one trace)."""
    import plotly.graph_objects as go

    first = maps[0]
    trace = go.Mesh3d(
        x=coords[:, 0],
        y=coords[:, 1],
        z=coords[:, 2],
        i=faces[:, 0],
        j=faces[:, 1],
        k=faces[:, 2],
        intensity=first.values,
        intensitymode="vertex",
        text=_text(voxel, first),
        hovertemplate="%{text}<extra></extra>",
        lighting=_FLAT,
        flatshading=False,
        **_colour(first),
    )
    buttons = [
        dict(
            label=m.name,
            method="restyle",
            args=[{"intensity": [m.values], "text": [_text(voxel, m)], **{k: [v] for k, v in _colour(m).items()}}],
        )
        for m in maps
    ]
    fig = go.Figure(trace)
    fig.update_layout(title=_title(title), scene=_SCENE, updatemenus=_menu(buttons))
    fig.update_scenes(camera_projection_type="orthographic")
    return fig


def points_figure(coords: np.ndarray, voxel: np.ndarray, maps: list[ViewMap], title: str):
    """The voxel coordinates [N, 3] as a rotatable 3-D scatter coloured by each map in turn."""
    import plotly.graph_objects as go

    def marker(m: ViewMap) -> dict:
        return dict(color=m.values, size=4, showscale=True, **_colour(m))

    first = maps[0]
    trace = go.Scatter3d(
        x=coords[:, 0],
        y=coords[:, 1],
        z=coords[:, 2],
        mode="markers",
        marker=marker(first),
        text=_text(voxel, first),
        hovertemplate="%{text}<extra></extra>",
    )
    buttons = [
        dict(label=m.name, method="restyle", args=[{"marker": [marker(m)], "text": [_text(voxel, m)]}]) for m in maps
    ]
    fig = go.Figure(trace)
    fig.update_layout(title=_title(title), scene=_SCENE, updatemenus=_menu(buttons))
    return fig


def volume_figure(ijk: np.ndarray, maps: list[ViewMap], title: str):
    """Axial slices (k) of the voxels' bounding box: one heatmap per map (the menu shows one), a slider over k.

    Heatmap cells are the grid's (i, j); grid points that are not voxels are NaN, drawn transparent."""
    import plotly.graph_objects as go

    low, high = ijk.min(axis=0), ijk.max(axis=0)
    box = tuple(int(n) for n in high - low + 1)
    local = ijk - low
    volumes = []
    for m in maps:
        volume = np.full(box, np.nan, dtype=np.float32)
        volume[tuple(local.T)] = m.values
        volumes.append(volume)
    i_axis = np.arange(low[0], high[0] + 1)
    j_axis = np.arange(low[1], high[1] + 1)
    # The middle of the box: a slice through the voxels for a compact region
    start = box[2] // 2

    def plane(volume: np.ndarray, k: int) -> np.ndarray:
        return volume[:, :, k].T  # heatmap rows are y (j), columns x (i)

    fig = go.Figure(
        [
            go.Heatmap(
                x=i_axis,
                y=j_axis,
                z=plane(v, start),
                visible=n == 0,
                hovertemplate=f"i %{{x}}, j %{{y}}: {m.label} = %{{z:.4g}}<extra></extra>",
                **_colour(m, "z"),
            )
            for n, (m, v) in enumerate(zip(maps, volumes))
        ]
    )
    steps = [
        dict(
            label=str(int(low[2]) + k),
            method="restyle",
            args=[{"z": [plane(v, k) for v in volumes]}, list(range(len(maps)))],
        )
        for k in range(box[2])
    ]
    buttons = [
        dict(label=m.name, method="update", args=[{"visible": [n == shown for n in range(len(maps))]}])
        for shown, m in enumerate(maps)
    ]
    fig.update_layout(
        title=_title(title),
        updatemenus=_menu(buttons),
        sliders=[dict(active=start, steps=steps, currentvalue=dict(prefix="slice k = "), pad=dict(t=40))],
        xaxis=dict(title="i", constrain="domain"),
        yaxis=dict(title="j", scaleanchor="x"),
        plot_bgcolor="white",
    )
    return fig


def sensor_figure(frame: pd.DataFrame, maps: list[ViewMap], title: str):
    """EEG/MEG: a table of every voxel (a channel at a time point, the ``roi`` column naming the channel)."""
    import plotly.graph_objects as go

    header = ["voxel", "channel"] + [m.name for m in maps]
    cells = [frame["voxel"].tolist(), frame["roi"].astype(str).tolist()]
    cells += [[None if not np.isfinite(x) else round(float(x), 4) for x in m.values] for m in maps]
    fig = go.Figure(go.Table(header=dict(values=header), cells=dict(values=cells)))
    fig.update_layout(title=_title(title))
    return fig


def surface_faces(surface_files: Mapping[str, str | os.PathLike], structure: np.ndarray, vertex: np.ndarray):
    """Triangles [F, 3] over the store's voxels (rows of its coordinates) from FreeSurfer surface files per
    hemisphere: the triangles whose three corners are all voxels of that hemisphere."""
    import nibabel as nib

    parts = []
    for hemi, path in surface_files.items():
        rows = np.flatnonzero(structure == hemi)
        if not rows.size:
            continue
        _, triangles = nib.freesurfer.read_geometry(os.fspath(path))
        row_of = np.full(int(triangles.max()) + 1, -1, dtype=np.int64)
        row_of[vertex[rows]] = rows
        mapped = row_of[triangles]
        parts.append(mapped[(mapped >= 0).all(axis=1)])
    return np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)


def fsaverage_surface_files(entry: Mapping[str, Any], root: str | os.PathLike) -> dict[str, Path] | None:
    """The ``{lh,rh}`` FreeSurfer surface files a config dataset entry's adapter reads its vertex positions from
    (NSD: ``nsddata/freesurfer/fsaverage/surf`` of the root; Algonauts 2023: the ``fsaverage_surface`` folder), or
    None for other formats or when they are not there."""
    options = entry.get("options") or {}
    if entry["format"] == "nsd":
        from afo.data.nsd import DEFAULTS as NSD_DEFAULTS

        folder = Path(root) / "nsddata" / "freesurfer" / "fsaverage" / "surf"
        surface = options.get("fsaverage_surface") or NSD_DEFAULTS["fsaverage_surface"]
    elif entry["format"] == "algonauts2023" and options.get("fsaverage_surface"):
        from afo.data.algonauts2023 import DEFAULTS as ALGONAUTS_DEFAULTS

        folder = Path(options["fsaverage_surface"])
        surface = options.get("surface") or ALGONAUTS_DEFAULTS["surface"]
    else:
        return None
    files = {h: folder / f"{h}.{surface}" for h in ("lh", "rh")}
    return files if all(p.is_file() for p in files.values()) else None


def write_page(fig, path: str | os.PathLike) -> Path:
    """The figure as one HTML file with plotly.js embedded (no network needed), written atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".tmp.html") as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    return path


def subject_page(
    frame: pd.DataFrame,
    path: str | os.PathLike,
    title: str,
    store: str | os.PathLike | None = None,
    subject: str | None = None,
    surface_files: Mapping[str, str | os.PathLike] | None = None,
) -> str:
    """Write one subject's page (``frame``: its rows of voxels.csv) from what its store holds; returns the kind of
    view written (mesh, points, volume, sensors)."""
    from afo.data.store import PreparedStore, volume_geometry
    from afo.figures.brainmaps import voxel_indices_from_coords

    frame = frame.sort_values("voxel")
    maps = view_maps(frame)
    voxel = frame["voxel"].to_numpy(dtype=np.int64)
    coords = frame[["x", "y", "z"]].to_numpy(dtype=np.float64)
    modality, geometry, layout = "fmri", None, None
    if store is not None and subject is not None:
        with PreparedStore(store) as opened:
            if subject in opened.subjects:
                modality = opened.modality
                geometry = volume_geometry(opened.subject_attrs(subject))
                layout = opened.layout(subject)
                store_coords = opened.coords(subject)
                if len(store_coords) != len(frame) or not np.array_equal(voxel, np.arange(len(store_coords))):
                    raise ValueError(f"{title}: voxels.csv does not list every voxel of the store once")
                coords = np.asarray(store_coords, dtype=np.float64)
    if modality in ("eeg", "meg"):
        fig, kind = sensor_figure(frame, maps, title), "sensors"
    elif geometry is not None:
        fig, kind = volume_figure(voxel_indices_from_coords(coords, geometry[0]), maps, title), "volume"
    elif layout is not None and layout.kind == "fsaverage" and surface_files:
        structure = np.asarray(layout.structure, dtype=object)
        faces = surface_faces(surface_files, structure, np.asarray(layout.index)[:, 0])
        fig, kind = mesh_figure(coords, faces, voxel, maps, title), "mesh"
    else:
        fig, kind = points_figure(coords, voxel, maps, title), "points"
    write_page(fig, path)
    return kind


def viewer_pages(
    voxels_csv: str | os.PathLike,
    model: str,
    stores: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    surfaces: Mapping[str, Mapping[str, str | os.PathLike] | None] | None = None,
) -> dict[str, str]:
    """One page per dataset and subject of a model's voxels.csv: ``out_dir/<dataset>__<subject>.html``.

    Args:
        voxels_csv: the model's evaluation table.
        model: its name (page titles).
        stores: dataset -> prepared store (volume grids, surface layouts, modality).
        out_dir: the folder of the pages (created).
        surfaces: dataset -> ``{lh, rh}`` FreeSurfer surface files (:func:`fsaverage_surface_files`), for meshes.

    Returns:
        file name -> kind of view.
    """
    from afo.figures.probing import file_stem, subjects_of
    from afo.io.tables import read_voxels

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for dataset, subject, frame in subjects_of(read_voxels(voxels_csv)):
        name = f"{file_stem(dataset, subject)}.html"
        written[name] = subject_page(
            frame,
            out_dir / name,
            f"{model}: {dataset} / {subject}",
            stores.get(dataset),
            subject,
            (surfaces or {}).get(dataset),
        )
    return written
