"""Brain maps in each dataset's space (afo.figures.brainmaps): NIfTI volumes (affine, grid checks), MGH overlays on
fsaverage and CIFTI-2 dscalar files on grayordinates, each loaded back with nibabel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from afo.data.store import SurfaceLayout
from afo.figures.brainmaps import voxel_indices_from_coords, write_cifti_maps, write_surface_maps, write_volume_maps

SHAPE = (9, 8, 7)


def _oblique_affine() -> np.ndarray:
    """1.8 mm voxels, rotated 20 degrees about z, shifted: a typical functional-space affine."""
    t = np.deg2rad(20.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.8, 1.8, 2.0])
    affine[:3, 3] = [-72.0, -110.5, -40.2]
    return affine


def _voxels(affine, n=40, seed=0):
    rng = np.random.default_rng(seed)
    flat = rng.choice(np.prod(SHAPE), size=n, replace=False)
    ijk = np.column_stack(np.unravel_index(flat, SHAPE))
    coords = (ijk @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)  # coords.npy is float32
    return ijk, coords


def test_indices_from_coords_invert_the_affine():
    affine = _oblique_affine()
    ijk, coords = _voxels(affine)
    np.testing.assert_array_equal(voxel_indices_from_coords(coords, affine), ijk)


def test_off_grid_coordinates_are_rejected():
    affine = _oblique_affine()
    _, coords = _voxels(affine)
    coords = coords.astype(np.float64)
    coords[3] += [0.5, 0.0, 0.0]  # a quarter voxel off
    with pytest.raises(ValueError, match=r"1 of 40 coordinates do not lie on .* grid.*voxel 3"):
        voxel_indices_from_coords(coords, affine)
    with pytest.raises(ValueError, match="affine"):
        voxel_indices_from_coords(coords, np.eye(3))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        voxel_indices_from_coords(coords[:, :2], affine)


def test_round_trip_values_affine_and_fill(tmp_path):
    affine = _oblique_affine()
    ijk, coords = _voxels(affine)
    rng = np.random.default_rng(1)
    maps = {
        "score": rng.uniform(-0.1, 0.9, size=40),
        "veroi": rng.integers(0, 5, size=40),
        "u_x": rng.uniform(-1, 1, size=40),
        "layer": rng.integers(0, 4, size=40),
    }
    maps["score"][0] = np.nan  # an unscorable voxel stays NaN
    paths = write_volume_maps(tmp_path / "maps" / "S1", coords, affine, SHAPE, maps)
    assert [p.name for p in paths] == ["S1_score.nii.gz", "S1_veroi.nii.gz", "S1_u_x.nii.gz", "S1_layer.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(p.name for p in paths)  # no temp files
    for path, (_name, values) in zip(paths, maps.items()):
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip
        img = nib.load(path)
        assert img.shape == SHAPE
        assert img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.affine, affine, atol=1e-6)
        np.testing.assert_allclose(img.get_qform(), affine, atol=1e-4)
        data = np.asarray(img.dataobj)
        at = data[tuple(ijk.T)]
        np.testing.assert_allclose(at, np.asarray(values, dtype=np.float32), equal_nan=True)
        outside = np.ones(SHAPE, bool)
        outside[tuple(ijk.T)] = False
        assert np.all(np.isnan(data[outside]))
        finite = values[np.isfinite(values)]
        assert img.header["cal_max"] == pytest.approx(float(finite.max()), rel=1e-6)


def test_fill_value_folder_prefix_and_sheared_affine(tmp_path):
    affine = np.array([[2.0, 0.4, 0, -10], [0, 2.0, 0, -20], [0, 0, 2.0, 5], [0, 0, 0, 1]])
    ijk, coords = _voxels(affine, n=10)
    (path,) = write_volume_maps(
        str(tmp_path / "out") + "/", coords, affine, SHAPE, {"r": np.arange(1.0, 11.0)}, fill_value=0.0
    )
    assert path == tmp_path / "out" / "r.nii.gz"
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)  # the sform keeps the shear exactly
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 1
    data = np.asarray(img.dataobj)
    assert np.count_nonzero(data) == 10 and data[tuple(ijk[4])] == 5.0


def test_write_rejects_bad_input(tmp_path):
    affine = _oblique_affine()
    ijk, coords = _voxels(affine, n=5)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        write_volume_maps(tmp_path / "a", coords, affine, SHAPE, {"r": np.zeros(4)})
    with pytest.raises(ValueError, match="outside the volume"):
        write_volume_maps(tmp_path / "a", coords, affine, (2, 2, 2), {"r": np.zeros(5)})
    with pytest.raises(ValueError, match="same grid point"):
        write_volume_maps(tmp_path / "a", np.vstack([coords, coords[:1]]), affine, SHAPE, {"r": np.zeros(6)})
    with pytest.raises(ValueError, match="file name"):
        write_volume_maps(tmp_path / "a", coords, affine, SHAPE, {"../r": np.zeros(5)})
    with pytest.raises(ValueError, match="numeric"):
        write_volume_maps(tmp_path / "a", coords, affine, SHAPE, {"roi": np.array(["V1"] * 5)})
    off = coords.astype(np.float64) + 0.3
    with pytest.raises(ValueError, match="grid"):
        write_volume_maps(tmp_path / "a", off, affine, SHAPE, {"r": np.zeros(5)})
    assert not any(tmp_path.iterdir())  # nothing written on error


def _fsaverage_layout() -> SurfaceLayout:
    """5 voxels on lh (of 20 vertices) and 3 on rh (of 20), vertices unsorted like a mask's could never be."""
    lh, rh = np.array([0, 3, 7, 12, 19]), np.array([1, 2, 18])
    index = np.full((8, 3), -1)
    index[:, 0] = np.r_[lh, rh]
    return SurfaceLayout("fsaverage", np.array(["lh"] * 5 + ["rh"] * 3, dtype=object), index, {"lh": 20, "rh": 20})


def test_mgh_overlays_per_hemisphere_load_back(tmp_path):
    layout = _fsaverage_layout()
    values = np.arange(1.0, 9.0)
    paths = write_surface_maps(
        tmp_path / "nsd__subj01", layout, {"r_test": values, "layer": np.r_[0, 1, 2, 0, 1, 2, 0, 1]}
    )
    assert [p.name for p in paths] == [
        "lh.nsd__subj01_r_test.mgh",
        "rh.nsd__subj01_r_test.mgh",
        "lh.nsd__subj01_layer.mgh",
        "rh.nsd__subj01_layer.mgh",
    ]
    lh = nib.load(tmp_path / "lh.nsd__subj01_r_test.mgh")
    assert isinstance(lh, nib.MGHImage) and lh.shape == (20, 1, 1)  # FreeSurfer's surface overlay shape
    data = np.asarray(lh.dataobj)[:, 0, 0]
    np.testing.assert_array_equal(data[[0, 3, 7, 12, 19]], values[:5])
    assert np.isnan(np.delete(data, [0, 3, 7, 12, 19])).all()  # vertices without a voxel
    rh = np.asarray(nib.load(tmp_path / "rh.nsd__subj01_r_test.mgh").dataobj)[:, 0, 0]
    np.testing.assert_array_equal(rh[[1, 2, 18]], values[5:])
    with pytest.raises(ValueError, match="shape"):
        write_surface_maps(tmp_path / "x", layout, {"r": np.zeros(7)})
    twice = SurfaceLayout(
        "fsaverage", layout.structure, np.where(np.arange(8)[:, None] == 1, 0, layout.index), layout.n_vertices
    )
    with pytest.raises(ValueError, match="one lh vertex"):
        write_surface_maps(tmp_path / "x", twice, {"r": np.zeros(8)})


def _cifti_layout() -> tuple[SurfaceLayout, np.ndarray]:
    """Grayordinates as an HCP file has them (cortex vertices, then thalamus voxels), a subset of them kept."""
    affine = np.diag([1.6, 1.6, 1.6, 1.0])
    affine[:3, 3] = [-90, -126, -72]
    left = np.zeros(30, bool)
    left[[2, 5, 6, 11]] = True
    right = np.zeros(30, bool)
    right[[0, 29]] = True
    vol = np.zeros((4, 5, 3), bool)
    vol[1, 2, 0] = vol[3, 4, 2] = True
    bm = (
        nib.cifti2.BrainModelAxis.from_mask(left, name="CortexLeft")
        + nib.cifti2.BrainModelAxis.from_mask(right, name="CortexRight")
        + nib.cifti2.BrainModelAxis.from_mask(vol, name="ThalamusLeft", affine=affine)
    )
    index = np.full((len(bm), 3), -1)
    surface = bm.vertex >= 0
    index[surface, 0] = bm.vertex[surface]
    index[~surface] = bm.voxel[~surface]
    layout = SurfaceLayout(
        "cifti",
        np.asarray(bm.name, dtype=object),
        index,
        {k: int(v) for k, v in bm.nvertices.items()},
        affine,
        (4, 5, 3),
    )
    return layout, bm


def test_cifti_dscalar_loads_back_on_the_same_grayordinates(tmp_path):
    layout, bm = _cifti_layout()
    n = len(bm)
    maps = {"r_test": np.linspace(-0.2, 0.8, n), "roi": np.r_[np.ones(4), np.full(n - 4, np.nan)]}
    path = write_cifti_maps(tmp_path / "hcp__group.dscalar.nii", layout, maps)
    image = nib.load(path)
    assert isinstance(image, nib.Cifti2Image)
    assert int(image.nifti_header["intent_code"]) == 3006  # NIFTI_INTENT_CONNECTIVITY_DENSE_SCALARS
    scalars, models = image.header.get_axis(0), image.header.get_axis(1)
    assert isinstance(scalars, nib.cifti2.ScalarAxis) and list(scalars.name) == ["r_test", "roi"]
    assert isinstance(models, nib.cifti2.BrainModelAxis) and models == bm  # structures, vertices, voxels, affine
    data = np.asarray(image.dataobj)
    assert data.shape == (2, n)
    np.testing.assert_allclose(data[0], maps["r_test"], rtol=1e-6)
    np.testing.assert_array_equal(np.isnan(data[1]), np.isnan(maps["roi"]))
    with pytest.raises(ValueError, match="dscalar"):
        write_cifti_maps(tmp_path / "x.nii", layout, maps)
