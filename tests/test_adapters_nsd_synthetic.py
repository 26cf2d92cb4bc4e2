"""NSD-synthetic adapter on a tiny NSD layout with the synthetic session beside it: a test-only holdout of the NSD
subjects on NSD's own voxels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import scipy.io
from conftest import assert_check_counts_store
from fixtures.formats import IMG, NSDSYN_TRIALS, decode_id, write_nsd, write_nsd_synthetic

from afo.data import nsd, nsd_synthetic
from afo.data.files import DatasetFileNotFoundError, DatasetFormatError
from afo.data.store import SPLIT_CODE, PreparedStore

RAW = {"intensity": "raw"}  # pixels as stored, so the identity code of the fixture's images survives


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsd")
    nsd_truth = write_nsd(root, n_sessions=1)
    syn_truth = write_nsd_synthetic(root)
    out = tmp_path_factory.mktemp("out")
    nsd.prepare(root, out / "nsd.h5", image_size=IMG, options={})
    report = nsd_synthetic.prepare(root, out / "nsdsyn.h5", image_size=IMG, options=RAW)
    return root, out, nsd_truth, syn_truth, report


def test_holdout_of_the_nsd_subjects_on_their_voxels(roots):
    root, out, nsd_truth, _, report = roots
    assert set(report["subjects"]) == {"subj01", "subj02"}
    with PreparedStore(out / "nsd.h5") as core, PreparedStore(out / "nsdsyn.h5") as syn:
        assert syn.subjects == core.subjects  # the same subject names: the NSD subjects' heads apply
        for subj in syn.subjects:
            # the same voxels in the same order: voxel i of the holdout is voxel i of the NSD store
            assert syn.info(subj).n_voxels == core.info(subj).n_voxels
            np.testing.assert_array_equal(syn.coords(subj), core.coords(subj))
            assert list(syn.rois(subj, "streams")) == list(core.rois(subj, "streams"))
            assert syn.subject_attrs(subj)["heads_of"] == "nsd"
            # a test-only store: every trial is a test trial
            assert set(np.unique(syn.trial_split(subj)).tolist()) == {SPLIT_CODE["test"]}


def test_trial_images_shared_and_colour(roots):
    _, out, _, syn_truth, _ = roots
    with PreparedStore(out / "nsdsyn.h5") as store:
        names, images = store.image_names(), store.images()
        # 12 shared images once, 4 colour images per subject
        assert len(names) == 12 + 2 * 4
        for subj in ("subj01", "subj02"):
            rows = store.trial_image(subj)
            assert store.info(subj).n_trials == NSDSYN_TRIALS
            # the centre square of each landscape frame, pixels as stored (intensity: raw)
            assert [decode_id(images[r]) for r in rows] == syn_truth["subjects"][subj]["ids"].tolist()
            colour = [names[r] for r in rows if syn_truth["master"][list(rows).index(r)] > 12]
            assert all(n.endswith(f"_{subj}") for n in colour)


def test_zscored_within_the_session_and_noise_ceiling(roots):
    _, out, nsd_truth, syn_truth, _ = roots
    with PreparedStore(out / "nsdsyn.h5") as store:
        for subj in ("subj01", "subj02"):
            mask = nsd_truth["subjects"][subj]["nsdgeneral"] > 0
            raw = syn_truth["subjects"][subj]["betas"][mask].T.astype(np.float64) / 300.0
            expected = (raw - raw.mean(0)) / raw.std(0)
            np.testing.assert_allclose(store.responses(subj)[:], expected, atol=1e-4)
            nc = store.noise_ceiling(subj)
            assert nc.shape == (mask.sum(),) and np.isfinite(nc).all() and (nc >= 0).all() and (nc <= 100).all()


def test_check_counts_the_store(roots):
    root, out, *_ = roots
    assert_check_counts_store("nsd_synthetic", root, RAW, out / "nsdsyn.h5")


def test_intensity_and_crop():
    frame = np.full((4, 8, 3), 64, dtype=np.uint8)
    frame[:, 2:6] = 100
    out = nsd_synthetic.transform(frame, "sqrt", "center")
    assert out.shape == (4, 4, 3)
    assert int(out[0, 0, 0]) == int(np.sqrt(100 / 255) * 255)  # 159
    assert nsd_synthetic.transform(frame, "raw", "none").shape == (4, 8, 3)


def test_errors(tmp_path):
    root = tmp_path / "nsd"
    write_nsd(root, n_sessions=1, formats=("nifti",))
    with pytest.raises(DatasetFileNotFoundError, match="nsdsynthetic_expdesign.mat"):
        nsd_synthetic.check(root, {}, read_data=False)
    write_nsd_synthetic(root, subjects=(1,))
    path = root / "nsddata" / "experiments" / "nsdsynthetic" / "nsdsynthetic_expdesign.mat"
    scipy.io.savemat(path, {"masterordering": np.arange(1, 101, dtype=np.float64)[None, :]})
    with pytest.raises(DatasetFormatError, match="masterordering"):
        nsd_synthetic.check(root, {}, read_data=False)
    write = root / "nsddata_betas" / "ppdata" / "subj01" / "func1pt8mm" / "nsdsyntheticbetas_fithrf_GLMdenoise_RR"
    scipy.io.savemat(path, {"masterordering": np.resize(np.arange(1, 17, dtype=np.float64), NSDSYN_TRIALS)[None, :]})
    img = nib.load(write / "betas_nsdsynthetic.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :700], img.affine), write / "betas_nsdsynthetic.nii.gz")
    with pytest.raises(DatasetFormatError, match="744"):
        nsd_synthetic.check(root, {})
