"""Algonauts 2021 adapter on a tiny copy (mp4 clips via PyAV, full/mini-track pickles)."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
from fixtures.formats import IMG, decode_id, write_algonauts2021

from afo.data import algonauts2021 as alg
from afo.data.files import DatasetFileNotFoundError, DatasetFormatError
from afo.data.store import PreparedStore
from afo.errors import UserError

SMALL_SPLIT = {"train_videos": 20, "n_train": 14, "n_val": 3}  # the fixture has 20 videos with fMRI


@pytest.fixture(scope="module")
def alg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("alg")
    return root, write_algonauts2021(root)


def test_full_track(alg_root, tmp_path):
    root, truth = alg_root
    out = tmp_path / "alg.h5"
    alg.prepare(root, out, image_size=IMG, options=SMALL_SPLIT)
    with PreparedStore(out) as store:
        assert store.subjects == ["sub01", "sub02"]
        assert store.n_images == 20  # the 2 clips without fMRI (the release's test videos) are left out
        assert store.image_names() == truth["videos"][:20]
        assert [decode_id(im) for im in store.images()] == [100 + v for v in range(20)]  # the middle frame
        for sub, t in truth["subjects"].items():
            np.testing.assert_array_equal(store.trial_image(sub), np.repeat(np.arange(20), 3))
            np.testing.assert_allclose(store.responses(sub), t["train"].reshape(60, -1))
            split = store.trial_split(sub)
            np.testing.assert_array_equal(split, np.repeat([0] * 14 + [1] * 3 + [2] * 3, 3))
            np.testing.assert_allclose(
                store.coords(sub), nib.affines.apply_affine(np.array(alg.MNI_AFFINE), t["ijk"]), atol=1e-4
            )
            labels = store.rois(sub, "algonauts")
            assert set(labels[t["rois"]["V1"]]) == {"V1"} and set(labels[t["rois"]["FFA"]]) == {"FFA"}
            assert set(labels[8:12]) == {""}
            assert store.subject_attrs(sub)["nc_source"] == "repeats"
            assert np.isfinite(store.noise_ceiling(sub)).all()


def test_mini_track_and_bigbrain(alg_root, tmp_path):
    root, truth = alg_root
    out = tmp_path / "mini.h5"
    alg.prepare(root, out, image_size=IMG, options={**SMALL_SPLIT, "track": "mini", "bigbrain": True})
    with PreparedStore(out) as store:
        assert store.subjects == ["algonauts2021"]
        info = store.info("algonauts2021")
        assert info.n_voxels == 2 * 16 and info.n_trials == 60
        resp = store.responses("algonauts2021")
        t1, t2 = truth["subjects"]["sub01"], truth["subjects"]["sub02"]
        cols1 = np.r_[t1["rois"]["V1"], t1["rois"]["FFA"]]
        np.testing.assert_allclose(resp[:, :16], t1["train"][:, :, cols1].reshape(60, -1))
        np.testing.assert_allclose(resp[:, 16:], t2["train"][:, :, cols1].reshape(60, -1))
        assert list(store.rois("algonauts2021", "subject")) == ["sub01"] * 16 + ["sub02"] * 16
        coords = store.coords("algonauts2021")
        # positions found in WB.pkl; the two subjects' clouds do not overlap
        a, b = coords[:16], coords[16:]
        assert (a.max(0) < b.min(0)).any()
        within = nib.affines.apply_affine(np.array(alg.MNI_AFFINE), t1["ijk"][cols1])
        np.testing.assert_allclose(a - a.min(0), within - within.min(0), atol=1e-3)


def test_mini_without_positions_and_malformed(tmp_path):
    root = tmp_path / "alg"
    write_algonauts2021(root, n_videos=6, n_subjects=1, tracks=("mini",))
    out = tmp_path / "m.h5"
    with pytest.warns(UserWarning, match="grid blocks"):
        alg.prepare(root, out, image_size=IMG, options={"track": "mini", "train_videos": 6, "n_train": 4, "n_val": 1})
    with PreparedStore(out) as store:
        coords = store.coords("sub01")
        assert len(np.unique(coords, axis=0)) == 16  # evenly spaced, no two voxels at one place

    with pytest.raises(DatasetFormatError, match=r"WB\.pkl.*'voxel_mask'.*missing"):
        d = root / "participants_data_v2021" / "full_track" / "sub01"
        d.mkdir(parents=True)
        with open(d / "WB.pkl", "wb") as fh:
            pickle.dump({"train": np.zeros((6, 3, 4), np.float32)}, fh)
        alg.prepare(root, tmp_path / "bad.h5", image_size=IMG, options={"train_videos": 6, "n_train": 4, "n_val": 1})
    with pytest.raises(ValueError, match="unknown option"):
        alg.prepare(root, tmp_path / "bad.h5", image_size=IMG, options={"ntrain": 4})


def _rewrite(path, n_videos):
    """Keep the first n_videos rows of a pickle's train array (a truncated download)."""
    with open(path, "rb") as fh:
        data = pickle.load(fh)
    data["train"] = data["train"][:n_videos]
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=2)


def test_video_count_is_checked_against_the_training_videos(tmp_path):
    """A pickle short of videos is named itself, compared with the training-video count, not with sub01."""
    root = tmp_path / "alg"
    write_algonauts2021(root)
    opts = {**SMALL_SPLIT, "track": "full"}
    _rewrite(root / "participants_data_v2021" / "full_track" / "sub01" / "WB.pkl", 19)
    with pytest.raises(
        DatasetFormatError,
        match=r"full_track/sub01/WB\.pkl: field 'train' covers 19 videos; "
        r"expected 20, one row per training video",
    ):
        alg.prepare(root, tmp_path / "x.h5", image_size=IMG, options=opts)
    _rewrite(root / "participants_data_v2021" / "mini_track" / "sub01" / "FFA.pkl", 19)
    with pytest.raises(DatasetFormatError, match=r"mini_track/sub01/FFA\.pkl: field 'train' covers 19 videos"):
        alg.prepare(root, tmp_path / "x.h5", image_size=IMG, options={**opts, "track": "mini"})
    # the default count is the release's 1000 training videos; a copy with fewer clips names the video folder
    with pytest.raises(DatasetFileNotFoundError, match=r"AlgonautsVideos268_All_30fpsmax: 22 mp4 files.*first 1000"):
        alg.prepare(root, tmp_path / "x.h5", image_size=IMG, options={"n_train": 14, "n_val": 3})
    assert not (tmp_path / "x.h5").exists()


def test_option_values_are_user_errors(alg_root, tmp_path):
    root, _ = alg_root
    for bad in ({"train_videos": 0}, {"train_videos": 20, "n_train": 18, "n_val": 2}, {"affine": [[1, 0], [0, 1]]}):
        with pytest.raises(UserError, match=r"algonauts2021: (option train_videos|n_train=18|option affine)"):
            alg.prepare(root, tmp_path / "x.h5", image_size=IMG, options=bad)
