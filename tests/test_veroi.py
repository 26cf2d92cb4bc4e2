"""veROI clustering (afo.rois.veroi): k-means + Ward on head weights, randROI, and their error messages."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster import hierarchy

from afo.rois.veroi import (
    MINIBATCH_MIN_VOXELS,
    adjusted_rand,
    cluster_veroi,
    random_rois,
    random_rois_like,
    roi_sizes,
)


def blobs(n_per: int = 100, d: int = 8, sep: float = 10.0, sd: float = 0.2, seed: int = 0):
    """Three well-separated Gaussian blobs in D dimensions, voxels shuffled; returns (weights, truth)."""
    rng = np.random.default_rng(seed)
    centers = np.zeros((3, d))
    centers[1, 0] = sep
    centers[2, 1] = sep
    truth = np.repeat(np.arange(3), n_per)
    x = centers[truth] + sd * rng.standard_normal((truth.size, d))
    perm = rng.permutation(truth.size)
    return x[perm].astype(np.float32), truth[perm]


@pytest.mark.parametrize("n_kmeans", [1000, 20])  # 1000 > N: every row its own cluster; 20: real k-means
def test_recovers_blobs_with_n_rois(n_kmeans: int) -> None:
    x, truth = blobs()
    res = cluster_veroi(x, n_kmeans=n_kmeans, n_rois=3)
    assert res.n_rois == 3
    assert adjusted_rand(res.labels, truth) == 1.0
    assert set(res.labels.tolist()) == {0, 1, 2}
    assert res.k == min(n_kmeans, x.shape[0])
    assert res.labels.shape == res.kmeans_labels.shape == (x.shape[0],)
    assert res.centroids.shape == (res.k, x.shape[1])
    assert res.linkage.shape == (res.k - 1, 4)
    # The reported cut height reproduces the partition of the centroids.
    raw = hierarchy.fcluster(res.linkage, res.cut_height, criterion="distance")
    assert adjusted_rand(raw, res.centroid_rois) == 1.0
    # The cut lies between the last merge kept and the first undone.
    heights = res.linkage[:, 2]
    assert heights[res.k - 4] < res.cut_height < heights[res.k - 3]


def test_recovers_blobs_with_threshold() -> None:
    x, truth = blobs()
    ref = cluster_veroi(x, n_kmeans=20, n_rois=3)
    # Within-blob merges are small, between-blob merges large (separation 10, sd 0.2); 5 is in the gap.
    for thr in (5.0, ref.cut_height):
        res = cluster_veroi(x, n_kmeans=20, threshold=thr)
        assert res.n_rois == 3
        assert res.cut_height == thr
        assert adjusted_rand(res.labels, truth) == 1.0
        np.testing.assert_array_equal(res.labels, ref.labels)
    # A threshold above the top merge gives one ROI, one below the lowest gives one ROI per centroid.
    assert cluster_veroi(x, n_kmeans=20, threshold=1e6).n_rois == 1
    assert cluster_veroi(x, n_kmeans=20, threshold=0.0).n_rois == 20


def test_minibatch_path_recovers_blobs() -> None:
    x, truth = blobs()
    res = cluster_veroi(x, n_kmeans=20, n_rois=3, minibatch=True)
    assert adjusted_rand(res.labels, truth) == 1.0
    assert MINIBATCH_MIN_VOXELS > x.shape[0]  # the default for this size is full k-means


def test_deterministic_given_seed() -> None:
    x, _ = blobs(seed=1)
    a = cluster_veroi(x, n_kmeans=30, n_rois=3, seed=7)
    b = cluster_veroi(x, n_kmeans=30, n_rois=3, seed=7)
    for field in ("labels", "kmeans_labels", "centroids", "linkage"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.cut_height == b.cut_height
    # Another seed may find other k-means clusters, but the blobs stay the same ROIs.
    c = cluster_veroi(x, n_kmeans=30, n_rois=3, seed=8)
    assert adjusted_rand(a.labels, c.labels) == 1.0


def test_roi_ids_follow_dendrogram_leaf_order() -> None:
    x, _ = blobs(n_per=40, seed=2)
    res = cluster_veroi(x, n_kmeans=25, n_rois=6)
    in_leaf_order = res.centroid_rois[hierarchy.leaves_list(res.linkage)]
    # ids appear as contiguous runs 0, 1, ..., R-1 from left to right
    assert np.all(np.diff(in_leaf_order) >= 0)
    assert in_leaf_order[0] == 0 and in_leaf_order[-1] == res.n_rois - 1
    # k-means clusters are numbered by the lexicographic order of their centroids
    assert np.array_equal(np.lexsort(res.centroids.T[::-1]), np.arange(res.k))


def test_voxel_label_is_its_centroids_label() -> None:
    x, _ = blobs(seed=3)
    res = cluster_veroi(x, n_kmeans=15, n_rois=4)
    np.testing.assert_array_equal(res.labels, res.centroid_rois[res.kmeans_labels])
    # centroids are the member means
    for c in range(res.k):
        np.testing.assert_allclose(res.centroids[c], x[res.kmeans_labels == c].mean(0), rtol=1e-5, atol=1e-5)


def test_normalize_clusters_by_direction() -> None:
    rng = np.random.default_rng(0)
    dirs = np.eye(3)
    truth = np.repeat(np.arange(3), 50)
    scale = rng.uniform(0.1, 10.0, truth.size)[:, None]  # same direction, very different lengths
    x = dirs[truth] * scale + 0.01 * rng.standard_normal((truth.size, 3))
    assert adjusted_rand(cluster_veroi(x, n_kmeans=20, n_rois=3, normalize=True).labels, truth) == 1.0


def test_k_capped_at_distinct_rows() -> None:
    x, truth = blobs(n_per=5)  # 15 voxels, n_kmeans 1000
    res = cluster_veroi(x, n_rois=3)
    assert res.k == 15
    assert adjusted_rand(res.labels, truth) == 1.0
    # duplicated rows do not count twice
    dup = np.concatenate([x, x[:4]])
    res = cluster_veroi(dup, n_rois=3)
    assert res.k == 15
    np.testing.assert_array_equal(res.labels[15:], res.labels[:4])


def test_single_distinct_row() -> None:
    res = cluster_veroi(np.ones((5, 3)), n_rois=1)
    assert res.k == 1 and res.n_rois == 1
    np.testing.assert_array_equal(res.labels, 0)
    assert cluster_veroi(np.ones((5, 3)), threshold=1.0).n_rois == 1


@pytest.mark.parametrize("kwargs", [{}, {"n_rois": 3, "threshold": 1.0}])
def test_error_both_or_neither_cut(kwargs: dict) -> None:
    x, _ = blobs(n_per=5)
    with pytest.raises(ValueError, match="exactly one of n_rois"):
        cluster_veroi(x, **kwargs)


def test_error_nan_rows_counted() -> None:
    x, _ = blobs(n_per=5)
    x = x.copy()
    x[[2, 7], 1] = np.nan
    x[9, 0] = np.inf
    with pytest.raises(ValueError, match=r"3 of 15 voxels have NaN"):
        cluster_veroi(x, n_rois=2)


def test_error_n_rois_above_k() -> None:
    x, _ = blobs(n_per=5)
    with pytest.raises(ValueError, match=r"n_rois=16 is more than the 15 k-means clusters"):
        cluster_veroi(x, n_rois=16)
    with pytest.raises(ValueError, match=r"n_rois=6 is more than the 5 k-means clusters"):
        cluster_veroi(x, n_kmeans=5, n_rois=6)


def test_error_tied_heights() -> None:
    # Unit square: two merges tie at height 1, so 3 clusters is not a cut; 2 and 4 are.
    x = np.array([[0, 0], [0, 1], [5, 0], [5, 1]], dtype=float)
    with pytest.raises(ValueError, match=r"exactly 3 ROIs.*\[2, 4\]"):
        cluster_veroi(x, n_rois=3)
    assert cluster_veroi(x, n_rois=2).n_rois == 2
    assert cluster_veroi(x, n_rois=4).n_rois == 4


def test_error_bad_shapes() -> None:
    with pytest.raises(ValueError, match="2-D"):
        cluster_veroi(np.zeros(5), n_rois=1)
    with pytest.raises(ValueError, match="threshold"):
        cluster_veroi(np.zeros((5, 2)), threshold=-1.0)


def test_random_rois_sizes_match_and_shuffle() -> None:
    x, _ = blobs()
    veroi = cluster_veroi(x, n_kmeans=20, n_rois=3).labels
    sizes = roi_sizes(veroi)
    rand = random_rois(sizes, seed=0)
    assert rand.shape == veroi.shape
    np.testing.assert_array_equal(roi_sizes(rand, 3), sizes)
    assert not np.array_equal(rand, veroi)
    assert abs(adjusted_rand(rand, veroi)) < 0.05  # a random mix of all voxel types
    np.testing.assert_array_equal(rand, random_rois(sizes, seed=0))
    assert not np.array_equal(rand, random_rois(sizes, seed=1))
    # sizes exactly, including an empty ROI
    np.testing.assert_array_equal(roi_sizes(random_rois([4, 0, 2]), 3), [4, 0, 2])
    with pytest.raises(ValueError):
        random_rois([3, -1])


def test_random_rois_like_keeps_counts_per_group() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    groups = np.repeat([0, 1, 2], 100)
    rand = random_rois_like(labels, groups, seed=3)
    assert not np.array_equal(rand, labels)
    for g in range(3):
        np.testing.assert_array_equal(roi_sizes(rand[groups == g], 4), roi_sizes(labels[groups == g], 4))
    np.testing.assert_array_equal(roi_sizes(random_rois_like(labels), 4), roi_sizes(labels, 4))


def test_adjusted_rand_wrapper() -> None:
    assert adjusted_rand([0, 0, 1, 1], [5, 5, 2, 2]) == 1.0
    with pytest.raises(ValueError):
        adjusted_rand([0, 1], [0, 1, 2])
