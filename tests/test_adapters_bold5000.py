"""BOLD5000 adapter on a tiny copy of the release-2 layout (GLMsingle NIfTI sessions, imgnames, ROI masks)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from fixtures.formats import B5K_SHAPE, IMG, decode_id, write_bold5000

from afo.data import bold5000
from afo.data.files import DatasetFileNotFoundError, DatasetFormatError
from afo.data.store import PreparedStore


@pytest.fixture(scope="module")
def b5k(tmp_path_factory):
    root = tmp_path_factory.mktemp("b5k")
    truth = write_bold5000(root)
    out = root.parent / "b5k.h5"
    report = bold5000.prepare(root, out, image_size=IMG, options={})
    return root, truth, out, report


def test_trials_images_and_voxels(b5k):
    root, truth, out, report = b5k
    with PreparedStore(out) as store:
        assert store.subjects == ["CSI1", "CSI2"]
        names = store.image_names()
        images = store.images()
        for subj, t in truth["subjects"].items():
            info = store.info(subj)
            assert info.n_trials == len(t["names"]) == 60
            rows = store.trial_image(subj)
            assert [names[r] for r in rows] == t["names"]
            assert [decode_id(images[r]) for r in rows] == [truth["pool"].index(n) + 1 for n in t["names"]]
            # voxels: union of the ROI masks (LHLO read as LHLOC) minus the voxel NaN in a whole session
            union = np.zeros(B5K_SHAPE, bool)
            for m in t["masks"].values():
                union |= m > 0
            union[t["nan_voxel"]] = False
            union[0, 0, 0] = False  # NaN in every session
            ijk = np.argwhere(union)
            assert info.n_voxels == len(ijk)
            np.testing.assert_allclose(store.coords(subj), nib.affines.apply_affine(truth["affine"], ijk))
            labels = store.rois(subj, "bold5000")
            expected = np.full(B5K_SHAPE, "", dtype=object)
            for roi, m in t["masks"].items():
                expected[m > 0] = roi.replace("LHLO", "LHLOC")
            assert list(labels) == list(expected[tuple(ijk.T)])
            # float betas: no /300; z-scored within each session
            resp = store.responses(subj)
            raw = t["betas"][1][tuple(ijk.T)].T.astype(np.float64)
            np.testing.assert_allclose(resp[30:], (raw - raw.mean(0)) / raw.std(0), atol=1e-4)


def test_repeats_are_test_and_give_the_noise_ceiling(b5k):
    _, truth, out, _ = b5k
    with PreparedStore(out) as store:
        for subj, t in truth["subjects"].items():
            split = store.trial_split(subj)
            repeated = np.isin(t["names"], truth["pool"][:5])
            np.testing.assert_array_equal(split[repeated], 2)
            assert set(np.unique(split[~repeated])) <= {0, 1}
            assert store.subject_attrs(subj)["nc_source"] == "repeats"
            assert np.isfinite(store.noise_ceiling(subj)).all()


def test_never_nan_mode_and_malformed(b5k, tmp_path):
    root, truth, _, _ = b5k
    out = tmp_path / "nn.h5"
    bold5000.prepare(root, out, image_size=IMG, options={"voxels": "never_nan", "subjects": ["CSI1"]})
    with PreparedStore(out) as store:
        assert store.info("CSI1").n_voxels == np.prod(B5K_SHAPE) - 2  # the two NaN voxels are out
    names = root / "BOLD5000_GLMsingle" / "CSI2_imgnames.txt"
    lines = names.read_text().splitlines()
    names.write_text("\n".join(lines[:-3]) + "\n")
    try:
        with pytest.raises(DatasetFormatError, match=r"CSI2_imgnames\.txt.*57 image names.*60 trials"):
            bold5000.prepare(root, tmp_path / "bad.h5", image_size=IMG, options={"subjects": [2]})
    finally:
        names.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="unknown option"):
        bold5000.prepare(root, tmp_path / "bad.h5", image_size=IMG, options={"roi": "x"})


def test_volume_grid_is_stored_for_brain_maps(b5k):
    """The store keeps the betas' affine and grid, so NIfTI maps can be written in the subject's space."""
    _, _, out, _ = b5k
    with PreparedStore(out) as store:
        for subject in store.subjects:
            attrs = store.subject_attrs(subject)
            affine = np.asarray(attrs["affine"]).reshape(4, 4)
            ijk = nib.affines.apply_affine(np.linalg.inv(affine), store.coords(subject))
            np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)
            assert (np.round(ijk) >= 0).all() and (np.round(ijk) < np.asarray(attrs["volume_shape"])).all()


def test_betas_without_orientation_take_the_brain_mask_affine(b5k):
    """GLMsingle's make_nii leaves qform_code = sform_code = 0: the affine comes from CSI{n}_brainmask.nii.gz."""
    root, truth, out, report = b5k
    betas = nib.load(root / "BOLD5000_GLMsingle" / "CSI1_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_ses-01.nii.gz")
    assert int(betas.header["qform_code"]) == int(betas.header["sform_code"]) == 0
    assert not np.allclose(betas.affine, truth["affine"])  # nibabel's fallback is not the subject's affine
    assert report["subjects"]["CSI1"]["affine_source"].startswith("CSI1_brainmask.nii.gz")
    with PreparedStore(out) as store:
        np.testing.assert_allclose(np.asarray(store.subject_attrs("CSI1")["affine"]).reshape(4, 4), truth["affine"])


def test_betas_with_their_own_orientation_keep_it(tmp_path):
    root = tmp_path / "root"
    truth = write_bold5000(root, n_subjects=1, betas_affine=True)  # the mask has an identity affine here
    out = tmp_path / "b.h5"
    report = bold5000.prepare(root, out, image_size=IMG, options={"voxels": "never_nan"})
    assert report["subjects"]["CSI1"]["affine_source"].startswith("CSI1_GLMbetas")
    with PreparedStore(out) as store:
        ijk = np.argwhere(np.isfinite(np.stack(truth["subjects"]["CSI1"]["betas"])[..., 0]).all(0))
        np.testing.assert_allclose(store.coords("CSI1"), nib.affines.apply_affine(truth["affine"], ijk))


def test_brain_mask_that_cannot_place_the_betas(tmp_path):
    root = tmp_path / "root"
    write_bold5000(root, n_subjects=1)
    mask = root / "BOLD5000_GLMsingle" / "CSI1_brainmask.nii.gz"
    both = r"CSI1_brainmask\.nii\.gz.*CSI1_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_ses-01\.nii\.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 4, 3), np.uint8), np.diag([2.0, 2, 2, 1])), mask)
    with pytest.raises(DatasetFormatError, match=rf"{both}.*option brainmask"):
        bold5000.prepare(root, tmp_path / "x.h5", image_size=IMG, options={})
    nib.save(nib.Nifti1Image(np.ones(B5K_SHAPE, np.uint8), np.diag([2.5, 2.5, 2.5, 1])), mask)
    with pytest.raises(DatasetFormatError, match=r"CSI1_brainmask\.nii\.gz: voxel size.*CSI1_GLMbetas"):
        bold5000.prepare(root, tmp_path / "x.h5", image_size=IMG, options={})
    # the mask named by option brainmask ({subject} = the subject number) replaces the one found by name
    good = tmp_path / "masks" / "CSI1_mask.nii.gz"
    good.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ones(B5K_SHAPE, np.uint8), np.diag([2.0, 2, 2, 1])), good)
    report = bold5000.prepare(
        root,
        tmp_path / "ok.h5",
        image_size=IMG,
        options={"brainmask": str(tmp_path / "masks" / "CSI{subject}_mask.nii.gz")},
    )
    assert report["subjects"]["CSI1"]["affine_source"].startswith("CSI1_mask.nii.gz")
    mask.unlink()
    with pytest.raises(
        DatasetFileNotFoundError,
        match=r"CSI1_GLMbetas.*qform_code = sform_code = 0.*"
        r"CSI1_brainmask\.nii\.gz.*option brainmask",
    ):
        bold5000.prepare(root, tmp_path / "x.h5", image_size=IMG, options={})
