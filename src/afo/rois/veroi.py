"""veROI: voxel-wise encoding ROIs from the head weights of the stage-0 models (paper section 3.3).

The stage-0 all-ROI models give every voxel of every subject a linear head weight vector; voxels whose
weights are alike read the same features, whatever the subject or modality, so clustering the weights gives
one ROI parcellation shared by all datasets. The recipe, as in the paper:

1. Euclidean k-means on the weights (k = 1000 by default) to bring ~10^5-10^6 voxels down to a number of
   points that hierarchical clustering can handle (Ward is O(k^2) memory).
2. Ward hierarchical clustering of the k centroids (each centroid counts once, whatever its size, as in the
   paper and the reference code).
3. Cut the dendrogram, either at exactly ``n_rois`` clusters or at a distance ``threshold`` (the paper
   hand-picks a threshold; the reference code tunes it until it gets 9 ROIs, which ``n_rois`` does
   directly). A voxel's ROI is the ROI of its centroid.

The reference code uses cosine k-means; ``normalize=True`` approximates that by L2-normalising every
voxel's weights first (for unit vectors, squared Euclidean distance is 2 - 2 cos).

ROI numbering is deterministic and meaningful: ROIs are numbered 0..R-1 from left to right in the
dendrogram's leaf order (``scipy.cluster.hierarchy.leaves_list``), so neighbouring ids are ROIs that merge
early, and a plot of the dendrogram shows the ROIs in id order. The k-means clusters themselves are
numbered by the lexicographic order of their centroids, so everything downstream of the k-means partition
(the linkage, the cut, the ids) does not depend on the arbitrary numbering k-means happens to produce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse
from scipy.cluster import hierarchy
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import adjusted_rand_score

from afo.errors import ConfigError

#: Above this many voxels ``cluster_veroi`` switches to MiniBatchKMeans (unless told otherwise): full
#: Lloyd k-means with k=1000 on the paper's 436,715 voxels x 256 weights costs ~10^11 flops per iteration.
MINIBATCH_MIN_VOXELS = 50_000


class VeroiConfigError(ConfigError):
    """The configured veROI cut does not fit the data (config keys afo.veroi.n_rois / n_kmeans)."""


@dataclass
class VeroiResult:
    """The outcome of :func:`cluster_veroi`.

    Attributes:
        labels: int64 [N], ROI id per voxel, 0..n_rois-1, numbered by dendrogram leaf order (left to right).
        kmeans_labels: int64 [N], k-means cluster per voxel, 0..k-1, clusters numbered by the lexicographic
            order of their centroids.
        centroids: float64 [k, D], the mean weight vector of each k-means cluster (rows match
            ``kmeans_labels``; if ``normalize`` was set, means of the normalised weights).
        linkage: float64 [k-1, 4], the scipy Ward linkage matrix of ``centroids`` (empty [0, 4] if k == 1).
        cut_height: the dendrogram height of the cut; ``fcluster(linkage, cut_height, "distance")``
            reproduces the partition of the centroids. For a cut at ``n_rois`` it is the midpoint between the
            last merge kept and the first merge undone (the top merge's height when n_rois == 1).
        n_rois: number of ROIs.
    """

    labels: np.ndarray
    kmeans_labels: np.ndarray
    centroids: np.ndarray
    linkage: np.ndarray
    cut_height: float
    n_rois: int

    @property
    def k(self) -> int:
        """Number of k-means clusters actually used (may be below ``n_kmeans``)."""
        return int(self.centroids.shape[0])

    @property
    def centroid_rois(self) -> np.ndarray:
        """ROI id of each k-means centroid, int64 [k]."""
        out = np.empty(self.k, dtype=np.int64)
        out[self.kmeans_labels] = self.labels
        return out


def cluster_veroi(
    weights: np.ndarray,
    n_kmeans: int = 1000,
    n_rois: int | None = None,
    threshold: float | None = None,
    seed: int = 0,
    normalize: bool = False,
    *,
    n_init: int = 4,
    minibatch: bool | None = None,
) -> VeroiResult:
    """Cluster voxels into veROIs by k-means on their head weights, then Ward clustering of the centroids.

    Args:
        weights: [N, D] per-voxel head weights, already averaged over the stage-0 seeds, the voxels of all
            subjects stacked. Every row must be finite.
        n_kmeans: number of k-means clusters; capped at the number of distinct rows (with that few voxels,
            every distinct row is its own cluster and k-means is skipped).
        n_rois: cut the dendrogram into exactly this many ROIs.
        threshold: cut the dendrogram at this height (Ward distance, in the units of the weights); the
            number of ROIs follows from it. Exactly one of ``n_rois`` and ``threshold`` must be given.
        seed: random state of k-means (the only random step).
        normalize: L2-normalise each voxel's weights first (an approximation of the reference code's
            cosine k-means); all-zero rows are left as they are.
        n_init: k-means restarts (the best inertia is kept).
        minibatch: use MiniBatchKMeans; ``None`` picks it when N > :data:`MINIBATCH_MIN_VOXELS`.

    Raises:
        ValueError: both or neither of ``n_rois``/``threshold``; non-finite rows (says how many); ``n_rois``
            larger than the number of k-means clusters; an ``n_rois`` that tied merge heights make
            impossible to cut at exactly (says which counts are possible).
    """
    if (n_rois is None) == (threshold is None):
        raise ValueError(
            "give exactly one of n_rois (cut into that many ROIs) and threshold (cut at that dendrogram "
            f"height); got n_rois={n_rois!r}, threshold={threshold!r}"
        )
    if n_rois is not None and (isinstance(n_rois, bool) or int(n_rois) != n_rois or n_rois < 1):
        raise ValueError(f"n_rois must be a positive integer, got {n_rois!r}")
    if threshold is not None and not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    if int(n_kmeans) != n_kmeans or n_kmeans < 1:
        raise ValueError(f"n_kmeans must be a positive integer, got {n_kmeans!r}")
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init!r}")

    x = _as_weight_matrix(weights)
    if normalize:
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        # An all-zero row has no direction; dividing would make it NaN, so it stays at the origin.
        x = x / np.where(norm > 0, norm, 1).astype(x.dtype)
    n_voxels = x.shape[0]

    # Distinct rows bound the number of clusters k-means can find; asking for more makes sklearn warn and
    # return duplicate centroids, which would then be "ROIs" without voxels.
    uniq, inverse = np.unique(x, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)  # numpy 2.0.0 returned it 2-D for axis=0
    n_distinct = uniq.shape[0]
    k = min(int(n_kmeans), n_distinct)

    if k == n_distinct:
        # Every distinct row is its own cluster: exact, and no randomness at all.
        km_labels = inverse.astype(np.int64)
    else:
        use_minibatch = n_voxels > MINIBATCH_MIN_VOXELS if minibatch is None else minibatch
        if use_minibatch:
            km = MiniBatchKMeans(
                n_clusters=k,
                n_init=n_init,
                random_state=seed,
                batch_size=max(4096, 4 * k),
                compute_labels=True,  # final labels from a full pass with the final centres
            )
        else:
            km = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
        km_labels = km.fit(x).labels_.astype(np.int64)
        # sklearn relocates empty clusters, but a cluster can still end with no voxel (mini-batch); an
        # empty one would be a centroid, and maybe an ROI, that no voxel belongs to, so drop it.
        _, km_labels = np.unique(km_labels, return_inverse=True)
        km_labels = km_labels.reshape(-1).astype(np.int64)
    # Centroids as exact member means (MiniBatchKMeans centres are only approximately that), in float64
    # so that the linkage does not depend on the input precision.
    centroids = _member_means(x, km_labels)
    k = centroids.shape[0]

    # Canonical cluster numbering: lexicographic order of the centroids (np.lexsort sorts by its last
    # key first, hence the reversed columns).
    order = np.lexsort(centroids.T[::-1])
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    centroids = centroids[order]
    km_labels = rank[km_labels]

    if n_rois is not None and n_rois > k:
        raise VeroiConfigError(
            f"n_rois={n_rois} is more than the {k} k-means clusters available (n_kmeans={n_kmeans}, "
            f"{n_distinct} distinct weight rows among {n_voxels} voxels); lower n_rois or raise n_kmeans"
        )

    if k >= 2:
        # Ward is monotone (no inversions), so merge heights only grow and a cut height is well defined.
        linkage = hierarchy.linkage(centroids, method="ward", metric="euclidean")
        leaves = hierarchy.leaves_list(linkage)
    else:
        linkage = np.empty((0, 4), dtype=np.float64)
        leaves = np.zeros(1, dtype=np.int64)
    heights = linkage[:, 2]

    if n_rois is not None:
        raw, cut_height = _cut_n_clusters(linkage, heights, k, int(n_rois))
    else:
        cut_height = float(threshold)  # type: ignore[arg-type]
        raw = hierarchy.fcluster(linkage, cut_height, criterion="distance") if k >= 2 else np.ones(1, int)

    # Number ROIs by first appearance along the dendrogram's leaf order. Flat clusters of a cut are
    # contiguous runs of leaves, so ids run left to right in a dendrogram plot.
    raw_in_leaf_order = raw[leaves]
    ids, first_pos = np.unique(raw_in_leaf_order, return_index=True)
    remap = dict(zip(ids[np.argsort(first_pos)].tolist(), range(ids.size)))
    centroid_roi = np.array([remap[r] for r in raw.tolist()], dtype=np.int64)

    return VeroiResult(
        labels=centroid_roi[km_labels],
        kmeans_labels=km_labels,
        centroids=centroids,
        linkage=linkage,
        cut_height=float(cut_height),
        n_rois=int(ids.size),
    )


def _as_weight_matrix(weights: np.ndarray) -> np.ndarray:
    """Validate [N, D] weights and return them as a float array (float32 kept, anything else float64)."""
    x = np.asarray(weights)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"weights must be a non-empty 2-D array [n_voxels, n_features], got shape {x.shape}")
    if x.dtype != np.float32:
        x = x.astype(np.float64)
    bad = ~np.isfinite(x).all(axis=1)
    n_bad = int(bad.sum())
    if n_bad:
        first = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(
            f"{n_bad} of {x.shape[0]} voxels have NaN or infinite weights (first rows: {first}); "
            "drop or impute them before clustering"
        )
    return x


def _member_means(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean row of ``x`` per label 0..max(labels), float64 [k, D]."""
    k = int(labels.max()) + 1
    n = labels.size
    # A sparse one-hot [k, N] matrix product is one pass over x, far faster than np.add.at.
    onehot = scipy.sparse.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n))
    sums = np.asarray(onehot @ x.astype(np.float64, copy=False))
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return sums / counts[:, None]


def _cut_n_clusters(linkage: np.ndarray, heights: np.ndarray, k: int, n_rois: int) -> tuple[np.ndarray, float]:
    """Flat cluster ids (1-based, per centroid) of the cut into exactly ``n_rois`` clusters, and its height."""
    if k == 1:
        return np.ones(1, dtype=int), 0.0
    n_merges = k - n_rois  # merges kept, all of them at or below the cut
    if 0 < n_merges < k - 1 and heights[n_merges - 1] == heights[n_merges]:
        # The last merge kept and the first merge undone happen at the same height: any height-based cut
        # keeps both or neither, so exactly n_rois clusters is not a cut of this dendrogram.
        possible = sorted({k - int(np.searchsorted(heights, h, side="right")) for h in heights} | {k})
        below = [c for c in possible if c < n_rois]
        above = [c for c in possible if c > n_rois]
        nearest = ([below[-1]] if below else []) + ([above[0]] if above else [])
        raise ValueError(
            f"cannot cut the dendrogram into exactly {n_rois} ROIs: merges tie at height "
            f"{heights[n_merges]:.6g}, so the nearest possible numbers of ROIs are {nearest}; "
            "choose one of those, or give a threshold instead"
        )
    raw = hierarchy.fcluster(linkage, n_rois, criterion="maxclust")
    n_found = np.unique(raw).size
    if n_found != n_rois:  # should not happen after the tie check; never return a wrong count silently
        raise ValueError(f"cutting at {n_rois} ROIs gave {n_found}; tied merge heights in the dendrogram?")
    if n_merges == 0:
        cut = heights[0] / 2.0
    elif n_merges == k - 1:
        cut = heights[-1]
    else:
        cut = (heights[n_merges - 1] + heights[n_merges]) / 2.0
    return raw, float(cut)


def roi_sizes(labels: np.ndarray, n_rois: int | None = None) -> np.ndarray:
    """Number of voxels per ROI id 0..n_rois-1 (default: 0..max(labels)), int64."""
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise ValueError("ROI labels must be >= 0")
    return np.bincount(labels.astype(np.int64).reshape(-1), minlength=n_rois or 0)


def random_rois(roi_sizes: Sequence[int], seed: int = 0) -> np.ndarray:
    """randROI: ``len(roi_sizes)`` ROIs of exactly these sizes, voxels assigned at random.

    Returns int64 [sum(roi_sizes)] labels: voxel v goes to ROI ``labels[v]``; ROI r has ``roi_sizes[r]``
    voxels. This is the paper's control (section 4.3): the same number and sizes of ROIs as the veROIs,
    but every ROI a random mix of all voxel types. Pass ``roi_sizes(veroi_labels)`` with the voxels in
    the same order as the veROI labels.
    """
    sizes = np.asarray(roi_sizes)
    if sizes.ndim != 1 or (sizes.size and (sizes.min() < 0 or not np.all(sizes == np.round(sizes)))):
        raise ValueError(f"roi_sizes must be a 1-D sequence of non-negative integers, got {roi_sizes!r}")
    labels = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes.astype(np.int64))
    return np.random.default_rng(seed).permutation(labels)


def random_rois_like(labels: np.ndarray, groups: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """randROI for given ROI labels: shuffle them, optionally only within each group (e.g. subject).

    Without ``groups`` this equals ``random_rois(roi_sizes(labels), seed)`` with the voxels in the order
    of ``labels``. With ``groups`` [N], every group keeps its own count of voxels per ROI as well, a stricter
    control when voxels of several subjects are stacked (no ROI gains or loses a subject's voxels).
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.permutation(labels)
    groups = np.asarray(groups).reshape(-1)
    if groups.shape != labels.shape:
        raise ValueError(f"groups has shape {groups.shape}, labels {labels.shape}")
    out = labels.copy()
    for g in np.unique(groups):  # sorted groups: the result depends only on seed and inputs
        idx = np.flatnonzero(groups == g)
        out[idx] = rng.permutation(labels[idx])
    return out


def adjusted_rand(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Adjusted Rand index of two partitions of the same voxels (1 = identical up to renaming, ~0 = chance)."""
    a = np.asarray(labels_a).reshape(-1)
    b = np.asarray(labels_b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in length: {a.size} vs {b.size}")
    return float(adjusted_rand_score(a, b))
