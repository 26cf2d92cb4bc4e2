"""THINGS-MEG adapter on tiny mne epochs files (-epo.fif with metadata)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_check_counts_store
from fixtures.formats import IMG, MEG_CHANNELS, decode_id, write_things_meg

from afo.data import things_meg
from afo.data.check import check_dataset
from afo.data.files import DatasetFormatError
from afo.data.store import PreparedStore


@pytest.fixture(scope="module")
def meg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("meg")
    return root, write_things_meg(root)


def test_sensor_time_voxels(meg_root, tmp_path):
    root, truth = meg_root
    out = tmp_path / "meg.h5"
    things_meg.prepare(root, out, image_size=IMG, options={"decim": 2, "tmin": 0.0, "tmax": 0.1})
    with PreparedStore(out) as store:
        assert store.modality == "meg" and store.subjects == ["P1", "P2"]
        names, images = store.image_names(), store.images()
        assert store.image_sources()[0] == "things:" + names[0].rsplit("/", 1)[1][:-4]  # the THINGS file name
        assert [decode_id(im) for im in images] == [truth["image_id"][n] for n in names]
        times = -0.1 + np.arange(61) / 200.0
        idx = np.flatnonzero((times >= -1e-9) & (times <= 0.1 + 1e-9))  # 21 samples -> 10 bins of 2
        bins = idx[:20].reshape(10, 2)
        for part, t in truth["participants"].items():
            md = t["metadata"]
            keep = np.flatnonzero(md["trial_type"] != "catch")
            info = store.info(part)
            assert info.n_trials == keep.size == 16 and info.n_voxels == len(MEG_CHANNELS) * 10
            assert [names[r] for r in store.trial_image(part)] == md["image_path"].to_numpy()[keep].tolist()
            expected = t["data"][keep][:, :, bins].mean(-1).reshape(keep.size, -1)  # channel-major
            np.testing.assert_allclose(store.responses(part), expected, rtol=1e-5, atol=1e-6)
            split = store.trial_split(part)
            np.testing.assert_array_equal(split == 2, md["trial_type"].to_numpy()[keep] == "test")
            coords = store.coords(part)
            # z is time (100 mm/s): neighbouring time points of one sensor are 10 ms = 1 mm apart
            np.testing.assert_allclose(np.diff(coords[:10, 2]), 1.0, atol=1e-4)
            np.testing.assert_allclose(coords[:10, :2], coords[:1, :2].repeat(10, 0))
            xy = coords[::10, :2]
            gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1)[np.triu_indices(len(xy), 1)]
            assert gaps.min() > 5.0  # sensors stay apart in the flattened layout (mm)
            assert list(store.rois(part, "channel")[::10]) == MEG_CHANNELS
            assert list(store.rois(part, "sensor_group")[::10]) == ["LO", "RO", "ZO", "LT", "RP"]
            assert store.subject_attrs(part)["nc_source"] == "repeats"


def test_bigbrain_and_malformed(meg_root, tmp_path):
    root, truth = meg_root
    out = tmp_path / "bb.h5"
    things_meg.prepare(root, out, image_size=IMG, options={"bigbrain": True, "decim": 61})
    with PreparedStore(out) as store:
        info = store.info("things_meg")
        assert info.n_voxels == 2 * len(MEG_CHANNELS)
        names = store.image_names()
        rows = store.trial_image("things_meg")
        assert info.n_trials == 16  # same (image, repeat) pairs for both participants: aligned, not stacked
        resp = store.responses("things_meg")
        for s, (_part, t) in enumerate(truth["participants"].items()):
            md = t["metadata"]
            keep = np.flatnonzero(md["trial_type"] != "catch")
            means = t["data"][keep].mean(-1)
            paths = md["image_path"].to_numpy()[keep]
            seen: dict = {}
            for i, p in enumerate(paths):
                k = seen.get(p, 0)
                seen[p] = k + 1
                row = [j for j, r in enumerate(rows) if names[r] == p][k]
                np.testing.assert_allclose(resp[row, s * 5 : (s + 1) * 5], means[i], rtol=1e-5)
    with pytest.raises(ValueError, match="unknown option"):
        things_meg.prepare(root, tmp_path / "x.h5", image_size=IMG, options={"decimate": 2})
    bad = tmp_path / "bad"
    (bad / "derivatives" / "preprocessed").mkdir(parents=True)
    (bad / "derivatives" / "preprocessed" / "preprocessed_P1-epo.fif").write_bytes(b"not a fif file")
    with pytest.raises(DatasetFormatError, match=r"preprocessed_P1-epo\.fif.*not an mne epochs file"):
        things_meg.prepare(bad, tmp_path / "x.h5", image_size=IMG, options={})


def test_bigbrain_aligns_presentations_and_fills_gaps(tmp_path):
    """Subjects with different presentations: rows are (image, k-th presentation); missing ones are NaN."""
    from afo.data.bigbrain import BigBrain
    from afo.data.store import StoreError, StoreWriter

    out = tmp_path / "bb.h5"
    with StoreWriter(out, name="bb", modality="meg", source="test", image_size=4) as writer:
        writer.write_images([np.zeros((4, 4, 3), np.uint8)] * 3, ["a", "b", "c"])
        with BigBrain(writer, name="bb") as bb:
            w = bb.subject("s1", 2)
            w.append(np.array([[1, 1], [2, 2], [3, 3]], np.float32), [0, 1, 0], [0, 2, 0])
            w.finish(np.zeros((2, 3)))
            w = bb.subject("s2", 1)
            w.append(np.array([[20], [10], [30]], np.float32), [1, 0, 2], [2, 0, 1])
            w.finish(np.ones((1, 3)))
    with PreparedStore(out) as store:
        # keys in first-seen order: (a,0) (b,0) (a,1) (c,0)
        np.testing.assert_array_equal(store.trial_image("bb"), [0, 1, 0, 2])
        np.testing.assert_array_equal(store.trial_split("bb"), [0, 2, 0, 1])
        np.testing.assert_array_equal(
            store.responses("bb"), [[1, 1, 10], [2, 2, 20], [3, 3, np.nan], [np.nan, np.nan, 30]]
        )
        assert list(store.rois("bb", "subject")) == ["s1", "s1", "s2"]
    assert not list(tmp_path.glob(".*scratch*"))

    with pytest.raises(StoreError, match="different splits"):
        with StoreWriter(tmp_path / "bad.h5", name="bb", modality="meg", source="test", image_size=4) as writer:
            writer.write_images([np.zeros((4, 4, 3), np.uint8)], ["a"])
            with BigBrain(writer, name="bb") as bb:
                for name, split in (("s1", 0), ("s2", 1)):
                    w = bb.subject(name, 1)
                    w.append(np.ones((1, 1), np.float32), [0], [split])
                    w.finish(np.zeros((1, 3)))
    assert not list(tmp_path.glob(".*scratch*")) and not (tmp_path / "bad.h5").exists()


def test_check_counts_what_prepare_writes(meg_root, tmp_path):
    root, _ = meg_root
    opts = {"decim": 2, "tmin": 0.0, "tmax": 0.1}
    out = tmp_path / "meg.h5"
    things_meg.prepare(root, out, image_size=IMG, options=opts)
    assert_check_counts_store("things_meg", root, opts, out)
    with pytest.raises(ValueError, match=r"channels \['MEG999'\] are not MEG channels"):
        check_dataset("things_meg", root, {"channels": ["MEG999"]})
