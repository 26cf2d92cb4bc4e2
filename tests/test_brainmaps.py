"""NIfTI brain maps (afo.figures.brainmaps): round trip through nibabel, affine, grid checks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from afo.figures.brainmaps import voxel_indices_from_coords, write_volume_maps

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
    for path, (name, values) in zip(paths, maps.items()):
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
    (path,) = write_volume_maps(str(tmp_path / "out") + "/", coords, affine, SHAPE, {"r": np.arange(1.0, 11.0)},
                                fill_value=0.0)
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
