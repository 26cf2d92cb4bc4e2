"""Interactive viewer pages (afo.figures.viewer): one self-contained plotly page per subject, a mesh on fsaverage, slices
of a volume, a table for EEG, points otherwise, carrying voxels.csv's values; and, with system services asked for, the
pages opened in a headless chromium (no console errors, the colours of known points)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from afo.data.store import StoreWriter, SurfaceLayout
from afo.figures import viewer

SHAPE = (6, 5, 4)
AFFINE = np.array([[2.0, 0, 0, -10.0], [0, 2.0, 0, 20.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])
REPO = Path(__file__).resolve().parents[1]


def _store(path, coords, modality="fmri", attrs=None, layout=None, rois=None):
    n = len(coords)
    rng = np.random.default_rng(0)
    with StoreWriter(path, name=path.stem, modality=modality, source="test", image_size=8) as w:
        w.write_images([np.zeros((8, 8, 3), np.uint8)] * 6, [f"i{i}" for i in range(6)])
        s = w.subject("subj01", n)
        s.append(rng.normal(size=(6, n)), np.arange(6), ["train"] * 3 + ["test"] * 3)
        s.finish(coords, rois={"roi": rois or ["V1"] * n}, attrs=attrs or {}, layout=layout)


def _voxels(coords, dataset, seed=0, **columns) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(coords)
    table = pd.DataFrame(
        {
            "dataset": dataset,
            "subject": "subj01",
            "voxel": np.arange(n),
            "roi": "V1",
            "x": coords[:, 0],
            "y": coords[:, 1],
            "z": coords[:, 2],
            "u_x": rng.uniform(-1, 1, n),
            "u_y": rng.uniform(-1, 1, n),
            "layer": rng.integers(0, 3, n),
            "r_test": rng.uniform(0, 1, n),
            "r_test_norm": rng.uniform(0, 1, n),
        }
    )
    table.loc[1, ["u_x", "u_y", "r_test"]] = np.nan  # a voxel the model does not fit
    return table.assign(**columns)


def _grid_surface(path, nx=6, ny=5) -> np.ndarray:
    """A flat FreeSurfer surface of nx x ny vertices (two triangles per square); returns its vertices."""
    xs, ys = np.meshgrid(np.arange(nx, dtype=np.float64), np.arange(ny, dtype=np.float64), indexing="ij")
    vertices = np.column_stack([xs.ravel() * 10, ys.ravel() * 10, np.zeros(nx * ny)])
    index = np.arange(nx * ny).reshape(nx, ny)
    a, b, c, d = index[:-1, :-1].ravel(), index[1:, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, 1:].ravel()
    faces = np.concatenate([np.column_stack([a, b, d]), np.column_stack([a, d, c])]).astype(np.int32)
    nib.freesurfer.write_geometry(str(path), vertices, faces)
    return vertices


def _decode(value):
    """A plotly JSON array: a list, or numpy's base64 form {dtype, bdata[, shape]}."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return array.reshape([int(s) for s in str(shape).split(",")]) if shape else array
    return (
        np.array([np.nan if v is None else v for v in value], dtype=np.float64)
        if value and not isinstance(value[0], list)
        else np.array([[np.nan if v is None else v for v in row] for row in value], dtype=np.float64)
    )


def _plot(html: str) -> tuple[list, dict]:
    """The traces and layout of the page's Plotly.newPlot call."""
    decoder = json.JSONDecoder()
    at = html.index("Plotly.newPlot(") + len("Plotly.newPlot(")
    parts = []
    while len(parts) < 3:
        at = len(html) - len(html[at:].lstrip(" \n,"))
        value, at = decoder.raw_decode(html, at)
        parts.append(value)
    return parts[1], parts[2]


def _menu_maps(layout: dict) -> list[str]:
    return [b["label"] for b in layout["updatemenus"][0]["buttons"]]


def _check_offline(html: str) -> None:
    assert '<script src="http' not in html and "<script src='http" not in html
    assert "plotly.js v" in html  # the library itself is in the page


def test_view_maps_use_degrees_where_known_and_image_units_otherwise():
    coords = np.zeros((3, 3))
    units = viewer.view_maps(_voxels(coords, "d").assign(u_x=[1.0, 0.0, 0.0], u_y=[0.0, -0.5, 0.0]))
    by = {m.name: m for m in units}
    assert list(by) == ["r_test", "r_test_norm", "eccentricity", "angle", "layer"]
    np.testing.assert_allclose(by["eccentricity"].values, [1.0, 0.5, 0.0])
    np.testing.assert_allclose(by["angle"].values[:2], [0.0, 90.0])  # u_y grows downwards: -0.5 is up
    assert "image half-widths" in by["eccentricity"].label
    degrees = {m.name: m for m in viewer.view_maps(_voxels(coords, "d", ecc_deg=[4.0, 2.0, 1.0], angle_deg=7.0))}
    np.testing.assert_allclose(degrees["eccentricity"].values, [4.0, 2.0, 1.0])
    assert "(deg)" in degrees["eccentricity"].label and (degrees["angle"].values == 7.0).all()


def test_pages_of_every_kind_carry_the_data_and_need_no_network(tmp_path):
    # a volume: voxels on the grid of AFFINE
    rng = np.random.default_rng(1)
    ijk = np.column_stack(np.unravel_index(rng.choice(np.prod(SHAPE), 20, replace=False), SHAPE))
    vol_coords = ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    _store(tmp_path / "vol.h5", vol_coords, attrs={"affine": AFFINE, "volume_shape": np.array(SHAPE)})
    # fsaverage: 20 of lh's 30 grid vertices and 10 of rh's, with their surface files
    surf = {h: tmp_path / f"{h}.sphere" for h in ("lh", "rh")}
    vertices = {h: _grid_surface(p) for h, p in surf.items()}
    chosen = {"lh": np.arange(20), "rh": np.arange(10, 20)}
    index = np.full((30, 3), -1)
    index[:, 0] = np.r_[chosen["lh"], chosen["rh"]]
    structure = np.array(["lh"] * 20 + ["rh"] * 10, dtype=object)
    surf_coords = np.r_[vertices["lh"][chosen["lh"]], vertices["rh"][chosen["rh"]] + [100.0, 0, 0]]
    _store(tmp_path / "surf.h5", surf_coords, layout=SurfaceLayout("fsaverage", structure, index, {"lh": 30, "rh": 30}))
    # EEG: 2 channels x 3 times
    _store(tmp_path / "eeg.h5", np.zeros((6, 3)), modality="eeg", rois=["O1"] * 3 + ["O2"] * 3)
    tables = {
        "vol": _voxels(vol_coords, "vol"),
        "surf": _voxels(surf_coords, "surf", seed=2, ecc_deg=3.0, angle_deg=45.0),
        "eeg": _voxels(np.zeros((6, 3)), "eeg", seed=3, roi=["O1"] * 3 + ["O2"] * 3),
        "synthetic": _voxels(rng.normal(size=(8, 3)), "synthetic", seed=4),  # no store: points
    }
    pd.concat(tables.values()).to_csv(tmp_path / "voxels.csv", index=False)
    stores = {d: tmp_path / f"{d}.h5" for d in ("vol", "surf", "eeg")}
    kinds = viewer.viewer_pages(tmp_path / "voxels.csv", "afo", stores, tmp_path / "view", {"surf": surf})
    assert kinds == {
        "eeg__subj01.html": "sensors",
        "surf__subj01.html": "mesh",
        "synthetic__subj01.html": "points",
        "vol__subj01.html": "volume",
    }
    pages = {name: (tmp_path / "view" / name).read_text() for name in kinds}
    for html in pages.values():
        _check_offline(html)

    # mesh: the voxels' vertices, the triangles among them (lh: 20 vertices = 4 full columns of 5 -> 3*4*2
    # triangles; rh: vertices 10-19 = 2 columns -> 1*4*2), one intensity per map
    traces, layout = _plot(pages["surf__subj01.html"])
    (mesh,) = traces
    assert mesh["type"] == "mesh3d" and len(_decode(mesh["i"])) == 24 + 8
    np.testing.assert_allclose(_decode(mesh["x"]), surf_coords[:, 0])
    surf_table = tables["surf"]
    np.testing.assert_allclose(_decode(mesh["intensity"]), surf_table["r_test"], equal_nan=True)
    buttons = {b["label"]: b["args"][0] for b in layout["updatemenus"][0]["buttons"]}
    assert list(buttons) == ["r_test", "r_test_norm", "eccentricity", "angle", "layer"]
    for name, column in [("r_test_norm", "r_test_norm"), ("eccentricity", "ecc_deg"), ("layer", "layer")]:
        np.testing.assert_allclose(_decode(buttons[name]["intensity"][0]), surf_table[column], equal_nan=True)
    assert "voxel 0: test Pearson r = " in mesh["text"][0]

    # volume: one heatmap per map over the voxels' bounding box, the slider's steps hold every slice
    traces, layout = _plot(pages["vol__subj01.html"])
    assert [t["type"] for t in traces] == ["heatmap"] * 5 and _menu_maps(layout)[0] == "r_test"
    low = ijk.min(axis=0)
    steps = layout["sliders"][0]["steps"]
    assert [int(s["label"]) for s in steps] == list(range(low[2], ijk[:, 2].max() + 1))
    vol_table = tables["vol"]
    for row, (i, j, k) in enumerate(ijk):
        step = steps[k - low[2]]["args"][0]["z"]
        for n, column in enumerate(["r_test", "r_test_norm"]):
            got = _decode(step[n])[j - low[1], i - low[0]]
            np.testing.assert_allclose(got, vol_table[column][row], rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(_decode(traces[0]["x"]), np.arange(low[0], ijk[:, 0].max() + 1))

    # EEG: a table, a row per voxel with its channel
    (table,) = _plot(pages["eeg__subj01.html"])[0]
    assert table["type"] == "table" and table["cells"]["values"][1] == ["O1"] * 3 + ["O2"] * 3
    eeg_r = _decode(table["cells"]["values"][2])
    np.testing.assert_allclose(eeg_r, tables["eeg"]["r_test"], atol=5e-5, equal_nan=True)  # shown to 4 decimals

    # points: the coordinates, coloured by each map
    traces, layout = _plot(pages["synthetic__subj01.html"])
    np.testing.assert_allclose(_decode(traces[0]["z"]), tables["synthetic"]["z"])
    np.testing.assert_allclose(_decode(traces[0]["marker"]["color"]), tables["synthetic"]["r_test"], equal_nan=True)


def test_surface_files_of_the_adapters(tmp_path):
    surf = tmp_path / "nsddata" / "freesurfer" / "fsaverage" / "surf"
    surf.mkdir(parents=True)
    assert viewer.fsaverage_surface_files({"format": "nsd"}, tmp_path) is None  # not downloaded: points
    for h in ("lh", "rh"):
        (surf / f"{h}.sphere").touch()
        (surf / f"{h}.inflated").touch()
    assert viewer.fsaverage_surface_files({"format": "nsd"}, tmp_path)["rh"] == surf / "rh.sphere"
    entry = {"format": "algonauts2023", "options": {"fsaverage_surface": str(surf), "surface": "inflated"}}
    assert viewer.fsaverage_surface_files(entry, tmp_path / "elsewhere")["lh"] == surf / "lh.inflated"
    assert viewer.fsaverage_surface_files({"format": "synthetic"}, tmp_path) is None


# --- a real browser -------------------------------------------------------------------------------------------------


def _chromium() -> str:
    """Debian's chromium, installed by .ci/chromium-setup.sh (root) when it is missing."""
    if shutil.which("chromium") is None:
        subprocess.run([str(REPO / ".ci" / "chromium-setup.sh")], check=True, timeout=900)
    path = shutil.which("chromium")
    assert path, ".ci/chromium-setup.sh did not install chromium"
    return path


def _screenshot(chromium: str, page: Path, png: Path) -> str:
    """Open the page headless with software WebGL, save a screenshot; returns the browser's log (console too)."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",  # CI runs as root, where chromium refuses its sandbox
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--enable-logging=stderr",
        "--v=0",
        "--hide-scrollbars",
        "--window-size=1000,800",
        "--virtual-time-budget=15000",
        f"--user-data-dir={png.parent / 'profile'}",
        f"--screenshot={png}",
        page.as_uri(),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(png.parent)}
    )
    assert done.returncode == 0 and png.is_file(), done.stderr[-3000:]
    return done.stderr


# Warnings that chromium itself writes to the console about how a page uses an API, not errors of the page
_BROWSER_HINTS = ("Canvas2D: Multiple readback operations using getImageData",)


def _console_errors(log: str) -> list[str]:
    """The page's console messages in chromium's log: uncaught exceptions and every console call (chromium logs
    console.error and console.log alike as ``INFO:CONSOLE``; a viewer page writes nothing to the console), less
    chromium's own usage hints."""
    return [
        line
        for line in log.splitlines()
        if ("Uncaught" in line or ":CONSOLE" in line) and not any(hint in line for hint in _BROWSER_HINTS)
    ]


def _middle_run(png: Path) -> np.ndarray:
    """The pixels [n, 3] of the widest non-white run across the screenshot's middle row: the plotted data."""
    from PIL import Image

    row = np.asarray(Image.open(png).convert("RGB"), dtype=np.int64)
    row = row[row.shape[0] // 2]
    coloured = (row < 245).any(axis=1)
    edges = np.flatnonzero(np.diff(np.r_[0, coloured.astype(int), 0]))
    starts, ends = edges[::2], edges[1::2]
    widest = int(np.argmax(ends - starts))
    return row[starts[widest] : ends[widest]]


def _rgb(colorscale: str, fraction: float) -> np.ndarray:
    import plotly.colors

    (colour,) = plotly.colors.sample_colorscale(colorscale, [fraction])
    return np.array([int(float(c)) for c in re.findall(r"[\d.]+", colour)])


def test_pages_render_in_a_headless_browser(tmp_path, system_services):
    chromium = _chromium()
    # A flat mesh seen from above: its left half (x < 25) has r = 0, its right half r = 1
    _grid_surface(tmp_path / "lh.sphere", nx=6, ny=6)
    vertices = nib.freesurfer.read_geometry(str(tmp_path / "lh.sphere"))[0]
    index = np.full((36, 3), -1)
    index[:, 0] = np.arange(36)
    layout = SurfaceLayout("fsaverage", np.array(["lh"] * 36, dtype=object), index, {"lh": 36})
    _store(tmp_path / "surf.h5", vertices, layout=layout)
    surf = _voxels(vertices, "surf").assign(r_test=np.where(vertices[:, 0] < 25, 0.0, 1.0))
    # A volume slice of 4 x 3 voxels whose r grows with i: 0, 1/3, 2/3, 1
    ijk = np.array([(i, j, 1) for i in range(4) for j in range(3)])
    coords = ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    _store(tmp_path / "vol.h5", coords, attrs={"affine": AFFINE, "volume_shape": np.array(SHAPE)})
    vol = _voxels(coords, "vol").assign(r_test=ijk[:, 0] / 3.0)
    pd.concat([surf, vol]).to_csv(tmp_path / "voxels.csv", index=False)
    stores = {"surf": tmp_path / "surf.h5", "vol": tmp_path / "vol.h5"}
    surfaces = {"surf": {"lh": tmp_path / "lh.sphere"}}
    kinds = viewer.viewer_pages(tmp_path / "voxels.csv", "afo", stores, tmp_path / "view", surfaces)
    assert kinds == {"surf__subj01.html": "mesh", "vol__subj01.html": "volume"}

    for name, expected in [
        ("surf__subj01.html", {0.25: 0.0, 0.75: 1.0}),
        ("vol__subj01.html", {(i + 0.5) / 4: i / 3 for i in range(4)}),
    ]:
        png = tmp_path / f"{name}.png"
        log = _screenshot(chromium, tmp_path / "view" / name, png)
        assert not _console_errors(log), _console_errors(log)
        run = _middle_run(png)
        assert len(run) > 200, f"{name}: nothing drawn across the middle of the page"
        for at, value in expected.items():
            got = run[int(at * len(run))]
            want = _rgb("Viridis", value)
            assert np.abs(got - want).max() <= 12, f"{name}: at {at:.2f} of the plot {got}, expected {want} ({value})"
