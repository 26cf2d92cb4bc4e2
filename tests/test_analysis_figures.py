"""Probing figures and brain maps (afo.figures.probing), incl. NIfTI maps of a volumetric store."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from afo.data.store import StoreWriter, SurfaceLayout
from afo.figures import probing as figures
from afo.rois.veroi import cluster_veroi

PNG = b"\x89PNG\r\n\x1a\n"
SHAPE = (6, 5, 4)


def _affine():
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 5.0]
    return affine


def _store(path, n_voxels=24, volumetric=True, seed=0, layout=None):
    """A tiny prepared store with one subject whose voxels lie on the grid of _affine() (or on ``layout``)."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(np.prod(SHAPE), size=n_voxels, replace=False)
    ijk = np.column_stack(np.unravel_index(flat, SHAPE))
    affine = _affine()
    coords = ijk @ affine[:3, :3].T + affine[:3, 3]
    with StoreWriter(path, name="vol", modality="fmri", source="test", image_size=8) as w:
        w.write_images([np.zeros((8, 8, 3), np.uint8)] * 6, [f"i{i}" for i in range(6)])
        s = w.subject("subj01", n_voxels)
        s.append(rng.normal(size=(6, n_voxels)), np.arange(6), ["train"] * 3 + ["test"] * 3)
        attrs = {"affine": affine, "volume_shape": np.array(SHAPE)} if volumetric else {}
        s.finish(
            coords,
            rois={"roi": ["V1"] * (n_voxels // 2) + ["LO"] * (n_voxels - n_voxels // 2)},
            attrs=attrs,
            layout=layout,
        )
    return ijk, coords


def _voxels_csv(path, coords, dataset="vol", subject="subj01", seed=0):
    rng = np.random.default_rng(seed)
    n = len(coords)
    eta = rng.dirichlet(np.ones(3), size=n)
    table = pd.DataFrame(
        {
            "dataset": dataset,
            "subject": subject,
            "voxel": np.arange(n),
            "roi": [str(v % 3) for v in range(n)],
            "x": coords[:, 0],
            "y": coords[:, 1],
            "z": coords[:, 2],
            "u_x": rng.uniform(-1, 1, n),
            "u_y": rng.uniform(-1, 1, n),
            "layer": eta.argmax(1),
            "eta_0": eta[:, 0],
            "eta_1": eta[:, 1],
            "eta_2": eta[:, 2],
            "r_val": rng.uniform(0, 1, n),
            "r_test": rng.uniform(0, 1, n),
            "nc": 50.0,
            "r_test_norm": rng.uniform(0, 1, n),
            "dataset_roi": "V1",
        }
    )
    table.loc[3, ["u_x", "u_y", "layer", "r_test", "eta_0", "eta_1", "eta_2"]] = np.nan  # a bad voxel
    table.to_csv(path, index=False)
    return table


def test_nifti_maps_of_a_volumetric_subject(tmp_path):
    ijk, coords = _store(tmp_path / "vol.h5")
    table = _voxels_csv(tmp_path / "voxels.csv", coords)
    report = figures.brain_maps(
        tmp_path / "voxels.csv", {"vol": tmp_path / "vol.h5"}, tmp_path / "png", tmp_path / "nii", "afo"
    )
    assert report == {"png": 2, "nifti": 6}
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["vol__subj01.r_test.png", "vol__subj01.roi.png"]
    for name in ("r_test", "u_x", "roi", "layer"):
        image = nib.load(tmp_path / "nii" / f"vol__subj01_{name}.nii.gz")
        assert image.shape == SHAPE
        np.testing.assert_allclose(image.affine, _affine())
        values = np.asarray(image.dataobj)[tuple(ijk.T)]
        expected = table[name].to_numpy(dtype=float) if name != "roi" else table["roi"].astype(float).to_numpy()
        np.testing.assert_allclose(values, expected, rtol=1e-6, equal_nan=True)
        assert np.isnan(np.asarray(image.dataobj)).sum() >= np.prod(SHAPE) - len(ijk)  # non-voxels are NaN
    assert json.loads((tmp_path / "nii" / "vol__subj01_roi.json").read_text()) == {"0": "0", "1": "1", "2": "2"}
    assert "vol/subj01: vol__subj01_r_test.nii.gz" in (tmp_path / "nii" / "README.txt").read_text()


def test_non_volumetric_subject_gets_png_only(tmp_path):
    _, coords = _store(tmp_path / "vol.h5", volumetric=False)
    _voxels_csv(tmp_path / "voxels.csv", coords)
    report = figures.brain_maps(
        tmp_path / "voxels.csv", {"vol": tmp_path / "vol.h5"}, tmp_path / "png", tmp_path / "nii", "afo"
    )
    assert report["nifti"] == 0 and report["png"] == 2
    assert "PNG maps only" in (tmp_path / "nii" / "README.txt").read_text()
    assert not list((tmp_path / "nii").glob("*.nii.gz"))


def test_surface_and_grayordinate_subjects_get_mgh_and_cifti_maps(tmp_path):
    n = 24
    index = np.full((n, 3), -1)
    index[:, 0] = np.r_[np.arange(0, 28, 2), np.arange(10)]  # 14 lh voxels on even vertices, 10 rh
    fsaverage = SurfaceLayout(
        "fsaverage", np.array(["lh"] * 14 + ["rh"] * 10, dtype=object), index, {"lh": 30, "rh": 30}
    )
    _, coords = _store(tmp_path / "surf.h5", volumetric=False, layout=fsaverage)
    table = _voxels_csv(tmp_path / "voxels.csv", coords, dataset="surf")
    report = figures.brain_maps(
        tmp_path / "voxels.csv", {"surf": tmp_path / "surf.h5"}, tmp_path / "png", tmp_path / "maps", "afo"
    )
    assert report["nifti"] == 12  # 6 maps x 2 hemispheres
    lh = np.asarray(nib.load(tmp_path / "maps" / "lh.surf__subj01_r_test.mgh").dataobj)[:, 0, 0]
    np.testing.assert_allclose(lh[0:28:2], table["r_test"].to_numpy()[:14], rtol=1e-6, equal_nan=True)
    assert "rh.surf__subj01_layer.mgh" in (tmp_path / "maps" / "README.txt").read_text()

    bm = nib.cifti2.BrainModelAxis.from_mask(np.arange(40) % 5 != 0, name="CortexLeft")[:n]
    cifti = SurfaceLayout(
        "cifti",
        np.asarray(bm.name, dtype=object),
        np.c_[bm.vertex, -np.ones((n, 2), int)],
        {k: int(v) for k, v in bm.nvertices.items()},
    )
    _, coords = _store(tmp_path / "hcp.h5", volumetric=False, layout=cifti)
    table = _voxels_csv(tmp_path / "voxels.csv", coords, dataset="hcp")
    figures.brain_maps(
        tmp_path / "voxels.csv", {"hcp": tmp_path / "hcp.h5"}, tmp_path / "png", tmp_path / "maps", "afo"
    )
    image = nib.load(tmp_path / "maps" / "hcp__subj01.dscalar.nii")
    assert list(image.header.get_axis(0).name) == list(figures.NIFTI_MAPS) and image.header.get_axis(1) == bm
    np.testing.assert_allclose(np.asarray(image.dataobj)[0], table["r_test"], rtol=1e-6, equal_nan=True)


def test_roi_codes_for_named_labels():
    codes, table = figures.roi_codes(np.array(["LO", "V1", "", "V10", "V2"], dtype=object))
    assert table == {1: "LO", 2: "V1", 3: "V2", 4: "V10"}
    np.testing.assert_array_equal(codes, [1, 2, np.nan, 4, 3])


def test_retina_layer_selector_dendrogram_and_roi_scores(tmp_path):
    _, coords = _store(tmp_path / "vol.h5")
    _voxels_csv(tmp_path / "voxels.csv", coords, dataset="synth_fmri")
    # A ground truth for the RetinaMap's learned-vs-true panel.
    truth = tmp_path / "truth"
    (truth / "subj01").mkdir(parents=True)
    (truth / "dataset.yaml").write_text("name: s\nmodality: fmri\n")
    pd.DataFrame(
        {
            "voxel": np.arange(len(coords)),
            "u_x": 0.1,
            "u_y": np.linspace(-1, 1, len(coords)),
            "level": [0, 2] * (len(coords) // 2),
        }
    ).to_csv(truth / "subj01" / "ground_truth.csv", index=False)
    centres = figures.true_centres(truth, "subj01", np.array([0, 1, 2]))
    assert np.isfinite(centres[0]).all() and np.isnan(centres[1]).all()
    report = figures.model_figures(
        tmp_path / "voxels.csv",
        "afo",
        {},
        tmp_path / "rm",
        tmp_path / "ls",
        tmp_path / "bm",
        tmp_path / "nii",
        {"synth_fmri": truth},
    )
    assert report["retina_map"] == 1 and report["layer_selector"] == 1
    for folder in ("rm", "ls"):
        files = list((tmp_path / folder).iterdir())
        assert [f.name for f in files] == ["synth_fmri__subj01.png"] and files[0].read_bytes()[:8] == PNG

    rng = np.random.default_rng(0)
    result = cluster_veroi(rng.normal(size=(200, 4)), n_kmeans=12, n_rois=3, seed=0)
    np.savez(
        tmp_path / "veroi.npz",
        linkage=result.linkage,
        cut_height=result.cut_height,
        labels=result.labels,
        kmeans_labels=result.kmeans_labels,
        centroid_rois=result.centroid_rois,
    )
    figures.dendrogram(tmp_path / "veroi.npz", tmp_path / "d.png")
    assert (tmp_path / "d.png").read_bytes()[:8] == PNG

    pd.DataFrame(
        [
            {
                "dataset": "synth_fmri",
                "subject": "subj01",
                "roi_set": s,
                "roi": r,
                "n_voxels": 8,
                "n_candidates": 3,
                "n_queries": 3,
                "top1": 0.5,
                "top5": 1.0,
                "chance_top1": 1 / 3,
            }
            for s, r in (("all", "all"), ("veroi", "0"), ("veroi", "1"))
        ]
    ).to_csv(tmp_path / "retrieval.csv", index=False)
    (tmp_path / "scores").mkdir()
    assert (
        len(
            figures.roi_score_figures(
                tmp_path / "voxels.csv", tmp_path / "retrieval.csv", "veroi", tmp_path / "scores", "afo"
            )
        )
        == 1
    )
    assert (tmp_path / "scores" / "synth_fmri__subj01.png").read_bytes()[:8] == PNG


def test_volume_geometry_reads_json_and_arrays():
    assert figures.volume_geometry({}) is None
    affine, shape = figures.volume_geometry({"affine": json.dumps(_affine().tolist()), "volume_shape": "[6, 5, 4]"})
    np.testing.assert_array_equal(affine, _affine())
    assert shape == SHAPE
    with pytest.raises(ValueError, match="3 integers"):
        figures.volume_geometry({"affine": _affine().ravel(), "volume_shape": [6, 5]})
