"""THINGS-EEG2 adapter on tiny preprocessed files (np.save dict and plain pickle variants)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_check_counts_store
from fixtures.formats import EEG_CHANNELS, IMG, decode_id, write_things_eeg2

from afo.data import things_eeg2
from afo.data.check import check_dataset
from afo.data.files import DatasetFormatError
from afo.data.store import PreparedStore


@pytest.fixture(scope="module")
def eeg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eeg")
    return root, write_things_eeg2(root)


def test_channel_time_voxels(eeg_root, tmp_path):
    root, truth = eeg_root
    out = tmp_path / "eeg.h5"
    things_eeg2.prepare(root, out, image_size=IMG, options={"tmin": -0.1, "tmax": -0.03, "decim": 2})
    with PreparedStore(out) as store:
        assert store.modality == "eeg" and store.subjects == ["sub-01", "sub-02"]  # npy and pickle variants
        assert [decode_id(im) for im in store.images()] == list(range(1, 11))
        assert store.image_names()[0] == "training_images/00001_thing0/thing0_01s.jpg"
        assert store.image_sources()[0] == "things:thing0_01s"  # the THINGS file name, for the overlap step
        for sub, data in truth["subjects"].items():
            tr, te = data["training"], data["test"]
            info = store.info(sub)
            assert info.n_trials == 8 * 4 + 2 * 5 and info.n_voxels == len(EEG_CHANNELS) * 4
            images = store.trial_image(sub)
            np.testing.assert_array_equal(images, np.r_[np.repeat(np.arange(8), 4), np.repeat([8, 9], 5)])
            # samples at -0.10 .. -0.03 s (8 of them) -> 4 bins of 2, channel-major voxels
            keep = np.arange(10, 18).reshape(4, 2)
            expected = np.concatenate([tr[..., keep].mean(-1).reshape(32, -1), te[..., keep].mean(-1).reshape(10, -1)])
            np.testing.assert_allclose(store.responses(sub), expected, rtol=1e-5, atol=1e-6)
            split = store.trial_split(sub)
            np.testing.assert_array_equal(split >= 2, images >= 8)
            coords = store.coords(sub)
            np.testing.assert_allclose(np.diff(coords[:4, 2]), 2.0, atol=1e-4)  # 20 ms bins -> 2 mm
            oz, o1 = coords[0, :2], coords[4, :2]
            assert 10 < np.linalg.norm(oz - o1) < 60  # neighbouring 10-20 electrodes, in mm
            assert list(store.rois(sub, "channel")[::4]) == EEG_CHANNELS
            assert store.subject_attrs(sub)["nc_source"] == "repeats"


def test_bigbrain_and_malformed(eeg_root, tmp_path):
    root, truth = eeg_root
    out = tmp_path / "bb.h5"
    things_eeg2.prepare(root, out, image_size=IMG, options={"bigbrain": True})
    with PreparedStore(out) as store:
        info = store.info("things_eeg2")
        assert info.n_trials == 42 and info.n_voxels == 2 * 80
        resp = store.responses("things_eeg2")
        np.testing.assert_allclose(resp[:32, 80:], truth["subjects"]["sub-02"]["training"].reshape(32, -1))
        coords = store.coords("things_eeg2")
        assert coords[80:, 0].min() > coords[:80, 0].max() or coords[80:, 1].min() > coords[:80, 1].max()
    bad = root / "preprocessed_data" / "sub-02" / "preprocessed_eeg_test.npy"
    good = bad.read_bytes()
    np.save(bad, {"preprocessed_eeg_data": np.zeros((2, 5, 4, 20)), "times": truth["times"]})
    try:
        with pytest.raises(DatasetFormatError, match=r"sub-02.*preprocessed_eeg_test\.npy.*'ch_names'.*missing"):
            things_eeg2.prepare(root, tmp_path / "x.h5", image_size=IMG, options={})
    finally:
        bad.write_bytes(good)
    with pytest.raises(ValueError, match="unknown option"):
        things_eeg2.prepare(root, tmp_path / "x.h5", image_size=IMG, options={"window": [0, 1]})


def test_check_counts_what_prepare_writes(eeg_root, tmp_path):
    root, _ = eeg_root
    opts = {"tmin": -0.1, "tmax": -0.03, "decim": 2}
    out = tmp_path / "eeg.h5"
    things_eeg2.prepare(root, out, image_size=IMG, options=opts)
    assert_check_counts_store("things_eeg2", root, opts, out)
    with pytest.raises(ValueError, match="unknown option"):
        check_dataset("things_eeg2", root, {"window": [0, 1]})
