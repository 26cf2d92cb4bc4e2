"""NSD adapter on a tiny copy of the NSD layout (NIfTI and HDF5 betas, expdesign.mat, imgBrick, ROIs, ncsnr)."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io
from conftest import assert_check_counts_store
from fixtures.formats import IMG, NSD_TRIALS, decode_id, write_nsd, write_nsd_fsaverage

from afo.data import nsd
from afo.data.check import check_dataset
from afo.data.files import DatasetFormatError
from afo.data.noise_ceiling import ncsnr_to_nc
from afo.data.store import PreparedStore


@pytest.fixture(scope="module")
def nsd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsd")
    truth = write_nsd(root)
    return root, truth


@pytest.fixture(scope="module")
def prepared(nsd_root, tmp_path_factory):
    root, truth = nsd_root
    out = tmp_path_factory.mktemp("out") / "nsd.h5"
    report = nsd.prepare(root, out, image_size=IMG, options={})
    return out, report, truth


def _expected_ids(truth, subject: int, n_sessions: int = 2) -> np.ndarray:
    master, subjectim = truth["master"], truth["subjectim"]
    return subjectim[subject - 1, master[: n_sessions * NSD_TRIALS] - 1] - 1


def test_counts_and_trial_images(prepared):
    out, report, truth = prepared
    assert set(report["subjects"]) == {"subj01", "subj02"}
    with PreparedStore(out) as store:
        assert store.modality == "fmri" and store.subjects == ["subj01", "subj02"]
        names = store.image_names()
        images = store.images()
        for s, subj in ((1, "subj01"), (2, "subj02")):
            mask = truth["subjects"][subj]["nsdgeneral"] > 0
            info = store.info(subj)
            assert info.n_trials == 2 * NSD_TRIALS and info.n_voxels == mask.sum()
            ids = _expected_ids(truth, s)
            rows = store.trial_image(subj)
            assert [names[r] for r in rows] == [f"nsd{i:05d}" for i in ids]
            # the stored pixels are imgBrick's rows for those ids (1-based indices resolved correctly)
            assert [decode_id(images[r]) for r in rows[:50]] == ids[:50].tolist()


def test_zscored_per_session_and_coords(prepared):
    out, _, truth = prepared
    with PreparedStore(out) as store:
        for subj in ("subj01", "subj02"):  # subj01 NIfTI, subj02 HDF5 (750, Z, Y, X)
            resp = store.responses(subj)
            for ses in range(2):
                block = resp[ses * NSD_TRIALS : (ses + 1) * NSD_TRIALS]
                np.testing.assert_allclose(block.mean(0), 0, atol=1e-4)
                np.testing.assert_allclose(block.std(0), 1, atol=1e-3)
            mask = truth["subjects"][subj]["nsdgeneral"] > 0
            ijk = np.argwhere(mask)
            raw = truth["subjects"][subj]["betas"][1][tuple(ijk.T)].T.astype(np.float64)
            expected = (raw - raw.mean(0)) / raw.std(0)
            np.testing.assert_allclose(resp[NSD_TRIALS:], expected, atol=1e-4)
            np.testing.assert_allclose(store.coords(subj), nib.affines.apply_affine(truth["affine"], ijk), atol=1e-4)


def test_scaling_without_zscore(nsd_root, tmp_path):
    root, truth = nsd_root
    out = tmp_path / "raw.h5"
    nsd.prepare(root, out, image_size=IMG, options={"zscore": False, "subjects": [2], "sessions": 1})
    with PreparedStore(out) as store:
        mask = truth["subjects"]["subj02"]["nsdgeneral"] > 0
        raw = truth["subjects"]["subj02"]["betas"][0][mask].T
        np.testing.assert_allclose(store.responses("subj02"), raw / 300.0, rtol=1e-6)  # int16 / 300 = PSC
        assert store.info("subj02").n_trials == NSD_TRIALS


def test_splits_noise_ceiling_and_rois(prepared):
    out, _, truth = prepared
    master = truth["master"][: 2 * NSD_TRIALS]
    with PreparedStore(out) as store:
        splits = {}
        names = store.image_names()
        for _s, subj in ((1, "subj01"), (2, "subj02")):
            split = store.trial_split(subj)
            np.testing.assert_array_equal(split == 2, master <= 1000)  # shared1000 = test
            assert set(np.unique(split[master > 1000])) == {0, 1}
            for r, c in zip(store.trial_image(subj), split):
                assert splits.setdefault(names[r], c) == c  # one split per image, across subjects too
            mask = truth["subjects"][subj]["nsdgeneral"] > 0
            nc = store.noise_ceiling(subj)
            expected = ncsnr_to_nc(truth["subjects"][subj]["ncsnr"][mask], 3)  # each shared image seen 3x
            np.testing.assert_allclose(nc, expected, rtol=1e-5)
            assert store.subject_attrs(subj)["nc_source"] == "given"
            streams = store.rois(subj, "streams")
            names_by_value = ["", "early", "midventral", "midlateral", "midparietal", "ventral", "lateral", "parietal"]
            assert list(streams) == [names_by_value[v] for v in truth["subjects"][subj]["streams"][mask]]
            prf = store.rois(subj, "prf-visualrois")
            assert set(prf) <= {"", "V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"}
            assert set(store.rois(subj, "nsdgeneral")) == {"nsdgeneral"}
        val = sum(1 for c in splits.values() if c == 1)
        assert 0.03 < val / sum(1 for c in splits.values() if c != 2) < 0.09


def test_fsaverage_surface(tmp_path):
    root = tmp_path / "nsd"
    write_nsd(root, n_sessions=1, formats=("nifti",))
    surf = write_nsd_fsaverage(root)
    out = tmp_path / "fs.h5"
    nsd.prepare(root, out, image_size=IMG, options={"space": "fsaverage", "roi_sets": ["nsdgeneral"]})
    with PreparedStore(out) as store:
        n_l, n_r = surf["lh"]["mask"].sum(), surf["rh"]["mask"].sum()
        assert store.info("subj01").n_voxels == n_l + n_r
        resp = store.responses("subj01")
        raw = surf["lh"]["betas"][surf["lh"]["mask"]].T  # float PSC: no /300
        np.testing.assert_allclose(resp[:, :n_l], (raw - raw.mean(0)) / raw.std(0), atol=1e-4)
        coords = store.coords("subj01")
        assert coords[n_l:, 0].min() > coords[:n_l, 0].max()  # sphere hemispheres moved apart
        assert store.subject_attrs("subj01")["nc_source"] == "given"
        layout = store.layout("subj01")  # hemisphere and fsaverage vertex of each voxel, for MGH maps
        assert layout.kind == "fsaverage" and layout.n_vertices == {"lh": 12, "rh": 12}
        assert list(layout.structure) == ["lh"] * n_l + ["rh"] * n_r
        np.testing.assert_array_equal(layout.index[:n_l, 0], np.flatnonzero(surf["lh"]["mask"]))
        np.testing.assert_array_equal(layout.index[n_l:, 0], np.flatnonzero(surf["rh"]["mask"]))


def test_malformed_inputs(nsd_root, tmp_path):
    root, _ = nsd_root
    with pytest.raises(ValueError, match="unknown option.*sesions.*valid options"):
        nsd.prepare(root, tmp_path / "x.h5", image_size=IMG, options={"sesions": 2})

    bad = tmp_path / "bad"
    write_nsd(bad, n_sessions=1, formats=("hdf5",))
    mat = bad / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"
    design = scipy.io.loadmat(mat)
    scipy.io.savemat(mat, {"masterordering": design["masterordering"]})
    with pytest.raises(DatasetFormatError, match=r"nsd_expdesign\.mat.*subjectim"):
        nsd.prepare(bad, tmp_path / "y.h5", image_size=IMG, options={})

    scipy.io.savemat(mat, {k: design[k] for k in ("masterordering", "subjectim")})
    h5 = bad / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session01.hdf5"
    with h5py.File(h5, "r+") as f:
        data = f["betas"][:]
        del f["betas"]
        f["betas"] = data.transpose(0, 3, 2, 1)  # (750, X, Y, Z): the wrong axis order
    with pytest.raises(DatasetFormatError, match=r"betas_session01\.hdf5.*'betas'.*\(750, Z, Y, X\)"):
        nsd.prepare(bad, tmp_path / "z.h5", image_size=IMG, options={})
    assert not (tmp_path / "z.h5").exists() and not list(tmp_path.glob(".z.h5.*"))  # nor its temporary


def test_shared515_definition():
    """shared515: shared images that every subject sees 3 times within its full set of sessions."""
    master = np.full(30000, 5000)
    master[:60] = np.repeat([1, 2, 3, 4], 15)[:60]  # 1-4 early: every subject sees them (>= 3x)
    master[22600:22603] = 7  # 7 only after 30 sessions (22500 trials): subjects 4 and 8 miss it
    subjectim = np.tile(np.arange(1, 10001), (8, 1))
    ids = nsd.test_image_ids(master, subjectim, "shared515")
    assert ids.tolist() == [0, 1, 2, 3]
    assert nsd.test_image_ids(master, subjectim, "shared1000").tolist() == list(range(1000))


def test_check_counts_what_prepare_writes(nsd_root, prepared, tmp_path):
    root, _ = nsd_root
    assert_check_counts_store("nsd", root, {}, prepared[0])
    # the stimuli file is checked too, not only opened when prepare gets to the images
    bad = tmp_path / "bad"
    write_nsd(bad, n_sessions=1, formats=("nifti",))
    with h5py.File(bad / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5", "r+") as f:
        data = f["imgBrick"][:]
        del f["imgBrick"]
        f["imgBrick"] = data.astype(np.float32)
    with pytest.raises(DatasetFormatError, match=r"nsd_stimuli\.hdf5.*imgBrick.*dtype float32"):
        check_dataset("nsd", bad, {}, read_data=False)
