import numpy as np
import pytest

from afo.data.noise_ceiling import ncsnr_from_repeats, ncsnr_to_nc, noise_ceiling_from_repeats
from afo.data.splits import split_by_image
from afo.data.store import PreparedStore, StoreError, StoreWriter


def _write(path, responses, trial_image, split, n_images=6, coords=None):
    with StoreWriter(path, name="t", modality="fmri", source="test", image_size=8) as w:
        w.write_images([np.zeros((4, 4, 3), np.uint8)] * n_images, [f"i{k}" for k in range(n_images)])
        sw = w.subject("s1", responses.shape[1])
        sw.append(responses, trial_image, split)
        return sw.finish(coords if coords is not None else np.zeros((responses.shape[1], 3)))


def test_round_trip_and_masks(tmp_path):
    rng = np.random.default_rng(0)
    responses = rng.normal(size=(8, 4)).astype(np.float32)
    responses[:, 1] = np.nan  # all-NaN voxel: masked, not dropped
    responses[:, 2] = 3.0  # constant voxel
    trial_image = np.array([0, 1, 2, 3, 4, 5, 0, 0])
    split = ["test", "train", "train", "val", "train", "train", "test", "test"]
    report = _write(tmp_path / "s.h5", responses, trial_image, split)
    assert report["n_bad_voxels"] == 2 and report["all_nan_voxels"] == 1 and report["constant_voxels"] == 1
    with PreparedStore(tmp_path / "s.h5") as store:
        assert store.subjects == ["s1"]
        assert store.images().shape == (6, 8, 8, 3)
        np.testing.assert_array_equal(store.trial_image("s1"), trial_image)
        np.testing.assert_array_equal(store.trial_split("s1"), [2, 0, 0, 1, 0, 0, 2, 2])
        np.testing.assert_array_equal(store.bad_voxel("s1"), [False, True, True, False])
        assert store.responses("s1").shape == (8, 4)
        assert store.info("s1").n_voxels == 4  # nothing dropped
        assert np.isnan(store.noise_ceiling("s1")[1])


def test_failed_write_leaves_no_store(tmp_path):
    with pytest.raises(StoreError, match="non-finite"):
        _write(
            tmp_path / "s.h5",
            np.ones((2, 2), np.float32),
            np.array([0, 1]),
            ["train", "train"],
            coords=np.full((2, 3), np.nan),
        )
    assert not (tmp_path / "s.h5").exists() and not list(tmp_path.glob(".s.h5.*"))  # nor its temporary


def test_split_must_be_by_image(tmp_path):
    with pytest.raises(StoreError, match="more than one split"):
        _write(tmp_path / "s.h5", np.ones((2, 2), np.float32), np.array([0, 0]), ["train", "test"])


def test_unknown_split_label(tmp_path):
    with pytest.raises(StoreError, match="unknown split"):
        _write(tmp_path / "s.h5", np.ones((1, 2), np.float32), np.array([0]), ["training"])


def test_noise_ceiling_matches_simulated_snr():
    rng = np.random.default_rng(1)
    n_images, reps = 400, 3
    signal = rng.normal(size=(n_images, 2))
    noise_sd = np.array([0.5, 2.0])
    trials = np.repeat(signal, reps, axis=0) + rng.normal(size=(n_images * reps, 2)) * noise_sd
    groups = np.repeat(np.arange(n_images), reps)
    ncsnr = ncsnr_from_repeats(trials, groups)
    np.testing.assert_allclose(ncsnr, 1 / noise_sd, rtol=0.15)
    # NC of a 3-trial average: 100 * snr^2 / (snr^2 + 1/3)
    nc = noise_ceiling_from_repeats(trials.astype(np.float32), groups, np.full(groups.size, 2))
    np.testing.assert_allclose(nc, ncsnr_to_nc(1 / noise_sd, 3), atol=6)
    assert nc[0] > nc[1]


def test_noise_ceiling_none_without_repeats():
    nc = noise_ceiling_from_repeats(np.ones((4, 3), np.float32), np.arange(4), np.zeros(4))
    assert np.isnan(nc).all()


def test_split_by_image_properties():
    trial_image = np.concatenate([np.arange(1000), np.repeat(np.arange(30), 2)])
    split = split_by_image(trial_image, seed=0)
    per_image = {}
    for img, s in zip(trial_image, split):
        assert per_image.setdefault(img, s) == s  # never split by trial
    codes = np.array([per_image[i] for i in range(1000)])
    assert (codes[:30] == 2).all()  # repeated images -> test
    fractions = np.bincount(codes, minlength=3) / 1000
    np.testing.assert_allclose(fractions, [0.90, 0.06, 0.04], atol=0.011)
    np.testing.assert_array_equal(split, split_by_image(trial_image, seed=0))
