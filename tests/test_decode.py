"""Brain decoding by retrieval (afo.decoding.ranking)."""

from __future__ import annotations

import numpy as np
import pytest

from afo.data.repeats import average_repeats
from afo.decoding.ranking import rank_candidates, retrieval_accuracy
from afo.metrics import pearson_r


def _brute_force(predicted, measured, mask=None):
    """Reference scores: a Python loop of pearson_r over each query's finite selected voxels."""
    sel = np.ones(predicted.shape[1], bool) if mask is None else mask
    out = np.empty((measured.shape[0], predicted.shape[0]))
    for q in range(measured.shape[0]):
        for c in range(predicted.shape[0]):
            out[q, c] = pearson_r(predicted[c, sel], measured[q, sel])
    return out


def test_exact_recovery_with_small_noise():
    rng = np.random.default_rng(0)
    predicted = rng.normal(size=(60, 300))
    true = rng.permutation(60)[:40]
    measured = predicted[true] + 0.1 * rng.normal(size=(40, 300))
    result = retrieval_accuracy(predicted, measured, true)
    assert result["top1"] == 1.0 and result["top5"] == 1.0
    assert result["n_candidates"] == 60 and result["n_queries"] == 40
    assert np.all(result["ranks"] == 0)
    order, scores = rank_candidates(predicted, measured)
    np.testing.assert_array_equal(order[:, 0], true)
    # Scores are sorted best first along each row.
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    assert np.all(np.diff(sorted_scores, axis=1) <= 0)


def test_scores_equal_pearson_r_and_single_query_shape():
    rng = np.random.default_rng(1)
    predicted = rng.normal(size=(7, 25)) + 3.0
    measured = rng.normal(size=(4, 25)) * 10
    _, scores = rank_candidates(predicted, measured)
    np.testing.assert_allclose(scores, _brute_force(predicted, measured), atol=1e-12)
    order, one = rank_candidates(predicted, measured[0])
    assert order.shape == (1, 7) and one.shape == (1, 7)
    np.testing.assert_allclose(one[0], scores[0], atol=1e-12)


def test_chance_level_with_random_data():
    rng = np.random.default_rng(2)
    n_cand, n_q = 20, 3000
    predicted = rng.normal(size=(n_cand, 50))
    measured = rng.normal(size=(n_q, 50))
    true = rng.integers(0, n_cand, size=n_q)
    result = retrieval_accuracy(predicted, measured, true)
    # Binomial standard errors: top-1 ~0.004, top-5 ~0.008; allow about 4 SE.
    assert result["top1"] == pytest.approx(1 / n_cand, abs=0.016)
    assert result["top5"] == pytest.approx(5 / n_cand, abs=0.032)


def test_voxel_mask_selects_the_roi():
    rng = np.random.default_rng(3)
    n_cand, n_vox = 30, 200
    roi = np.zeros(n_vox, bool)
    roi[:40] = True
    predicted = rng.normal(size=(n_cand, n_vox))
    measured = np.empty((n_cand, n_vox))
    # Inside the ROI the response matches the true image; outside it matches the next candidate.
    measured[:, roi] = predicted[:, roi] + 0.1 * rng.normal(size=(n_cand, 40))
    decoy = np.roll(np.arange(n_cand), -1)
    measured[:, ~roi] = predicted[decoy][:, ~roi]
    true = np.arange(n_cand)
    assert retrieval_accuracy(predicted, measured, true, voxel_mask=roi)["top1"] == 1.0
    assert retrieval_accuracy(predicted, measured, true)["top1"] == 0.0
    assert retrieval_accuracy(predicted, measured, decoy)["top1"] == 1.0
    _, scores = rank_candidates(predicted, measured[:3], voxel_mask=roi)
    np.testing.assert_allclose(scores, _brute_force(predicted, measured[:3], roi), atol=1e-12)


def test_nan_voxels_in_measured_are_ignored_per_query():
    rng = np.random.default_rng(4)
    predicted = rng.normal(size=(25, 120))
    true = np.arange(25)
    measured = predicted + 0.2 * rng.normal(size=predicted.shape)
    measured[:, :10] = np.nan  # voxels missing for the whole subject
    measured[5, 50:80] = 1e6  # garbage in one query ...
    measured[5, 50:80] = np.nan  # ... masked as NaN
    measured[9, ::3] = np.nan  # a query with its own pattern
    result = retrieval_accuracy(predicted, measured, true)
    assert result["top1"] == 1.0
    _, scores = rank_candidates(predicted, measured)
    np.testing.assert_allclose(scores, _brute_force(predicted, measured), atol=1e-12)


def test_degenerate_cases_rank_last_and_ties_count_against():
    rng = np.random.default_rng(5)
    predicted = rng.normal(size=(6, 40))
    predicted[2] = 1.0  # constant prediction: no correlation, ranks last
    order, scores = rank_candidates(predicted, predicted[0] + 0.1)
    assert np.isnan(scores[0, 2]) and order[0, -1] == 2
    # All candidates identical: the true one cannot be told apart, so it is not counted as found.
    same = np.repeat(rng.normal(size=(1, 40)), 5, axis=0)
    result = retrieval_accuracy(same, same[:2], np.array([0, 3]))
    assert result["top1"] == 0.0 and np.all(result["ranks"] == 4)
    # A query with fewer than 3 finite voxels has no score and is left out.
    measured = rng.normal(size=(2, 40))
    measured[1, 2:] = np.nan
    result = retrieval_accuracy(predicted, measured, np.array([0, 1]))
    assert result["n_queries"] == 1 and np.isnan(result["ranks"][1])


def test_non_finite_predictions_dropped_with_warning():
    rng = np.random.default_rng(6)
    predicted = rng.normal(size=(10, 50))
    measured = predicted + 0.05 * rng.normal(size=predicted.shape)
    predicted[3, 7] = np.nan
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = retrieval_accuracy(predicted, measured, np.arange(10))
    assert result["top1"] == 1.0


def test_bad_inputs():
    p = np.zeros((4, 10))
    with pytest.raises(ValueError, match="voxels"):
        rank_candidates(p, np.zeros((2, 9)))
    with pytest.raises(ValueError, match="voxel_mask"):
        rank_candidates(p, np.zeros(10), voxel_mask=np.ones(10, dtype=int))
    with pytest.raises(ValueError, match="selects no voxel"):
        rank_candidates(p, np.zeros(10), voxel_mask=np.zeros(10, bool))
    with pytest.raises(ValueError, match="out of range"):
        retrieval_accuracy(np.eye(4, 10), np.eye(2, 10), np.array([0, 4]))
    with pytest.raises(ValueError, match="one entry per query"):
        retrieval_accuracy(np.eye(4, 10), np.eye(2, 10), np.array([0]))


def test_average_repeats():
    responses = np.array([[1.0, np.nan], [3.0, 4.0], [5.0, np.nan], [7.0, 8.0]])
    images, mean = average_repeats(responses, np.array([10, 10, 20, 30]))
    np.testing.assert_array_equal(images, [10, 20, 30])
    np.testing.assert_array_equal(mean[:, 0], [2.0, 5.0, 7.0])
    np.testing.assert_array_equal(mean[[0, 2], 1], [4.0, 8.0])
    assert np.isnan(mean[1, 1])


# -- a user's own response (afo decode) ---------------------------------------------------------------------------

MODEL_VOXELS = np.array([1, 3, 4, 6, 8])  # a subject with 10 voxels in its dataset, 5 of them modelled


def test_user_response_of_the_wrong_length_or_subject_is_refused():
    from afo.decoding.retrieval import DecodeInputError, match_response

    pattern = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(match_response(pattern[:5], MODEL_VOXELS, "d/s", n_dataset_voxels=10), [pattern[:5]])
    np.testing.assert_array_equal(match_response(pattern, MODEL_VOXELS, "d/s", n_dataset_voxels=10), [MODEL_VOXELS])
    for n in (9, 11, 40):  # another subject's length, or any length above the largest modelled index
        with pytest.raises(DecodeInputError, match=f"response has {n} voxels.*5 modelled voxels of 10"):
            match_response(np.arange(n, dtype=np.float32), MODEL_VOXELS, "d/s", n_dataset_voxels=10)
    # A model file that does not record the count (before version 3): taken as the dataset's, with a warning.
    with pytest.warns(UserWarning, match="cannot be checked"):
        match_response(np.arange(11, dtype=np.float32), MODEL_VOXELS, "d/s")


@pytest.mark.parametrize(
    "response, match",
    [
        (np.full(5, np.nan), "0 finite value"),
        (np.array([1.0, np.nan, np.nan, np.nan, 2.0]), "2 finite value"),
        (np.full(5, 3.0), "every matched value is 3"),
        (np.array([1, 2, 3, 4, 5]) + 0j, "complex"),
        (np.array([True, False, True, False, True]), "bool"),
        (np.array(["a", "b", "c", "d", "e"]), "<U1"),
    ],
    ids=["all_nan", "two_finite", "constant", "complex", "bool", "text"],
)
def test_user_response_without_a_usable_pattern_is_refused(response, match):
    from afo.decoding.retrieval import DecodeInputError, match_response, rank_user_images

    with pytest.raises(DecodeInputError, match=match):
        match_response(response, MODEL_VOXELS, "d/s", n_dataset_voxels=10)
    with pytest.raises(DecodeInputError, match=match):  # the library function checks as the CLI does
        rank_user_images(np.eye(3, 5), ["a", "b", "c"], response, MODEL_VOXELS, "d/s", n_dataset_voxels=10)


@pytest.mark.parametrize(
    "write, match",
    [
        (None, "no such file"),
        (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "not a readable .npy"),
        (lambda p: np.savez(p.with_suffix(""), x=np.zeros(3)) or p.with_suffix(".npz").rename(p), "npz archive"),
        (lambda p: p.write_text("1 2 3\n"), "not a readable .npy"),
        (lambda p: np.save(p, np.zeros(100)) or p.write_bytes(p.read_bytes()[:100]), "not a readable .npy"),
    ],
    ids=["missing", "object", "npz", "text", "truncated"],
)
def test_response_files_that_are_not_arrays_are_named(tmp_path, write, match):
    from afo.decoding.retrieval import DecodeInputError, read_response

    path = tmp_path / "response.npy"
    if write is not None:
        write(path)
    with pytest.raises(DecodeInputError, match=match) as info:
        read_response(path)
    assert "--response" in str(info.value) and "numpy.save" in str(info.value)
    assert "\n" not in str(info.value)
