"""Retrieval figures (paper Figures 7 and 9): a subject's test images and the images its predictions retrieve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from afo.data.store import PreparedStore
from afo.decoding.ranking import rank_candidates
from afo.decoding.retrieval import subject_roi_labels
from afo.evaluation.predictions import SubjectPredictions
from afo.figures.plots import plot_retrievals
from afo.io.tables import ordered
from afo.metrics import MIN_PAIRS


def example_queries(n_images: int, n_examples: int) -> np.ndarray:
    """Indices of ``n_examples`` test images spread evenly over the test set (deterministic)."""
    if n_images == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_images - 1, min(n_examples, n_images)).round().astype(np.int64))


def retrieval_figure(
    pred: SubjectPredictions,
    store_path: str | Path,
    path: str | Path,
    roi_labels: np.ndarray | None = None,
    roi_set: str = "roi",
    n_examples: int = 3,
    top_k: int = 5,
) -> Path:
    """Top retrieved images (Figures 7 and 9): ``n_examples`` test images matched on all voxels, then the first
    of them matched on each ROI of ``roi_labels`` (per predicted voxel, '' = none). Row labels give the
    condition and the rank of the true image (0 = retrieved first)."""
    queries = example_queries(pred.images.size, n_examples)
    if queries.size == 0:
        raise ValueError(f"{pred.key}: no test image to show")
    rows: list[tuple[int, str, np.ndarray]] = [
        (int(q), "all voxels", np.ones(pred.voxels.size, dtype=bool)) for q in queries
    ]
    if roi_labels is not None:
        for roi in ordered(set(roi_labels) - {""}):
            mask = roi_labels == roi
            if mask.sum() >= MIN_PAIRS:
                rows.append((int(queries[0]), f"{roi_set} {roi}", mask))
    k = min(top_k, pred.images.size)
    shown_rows, titles = [], []
    for q, label, mask in rows:
        order, scores = rank_candidates(pred.predicted, pred.measured[q], voxel_mask=mask)
        shown_rows.append(order[0, :k])
        rank = int(np.flatnonzero(order[0] == q)[0])
        titles.append(f"test {q}, {label}\n(true image rank {rank})")
    with PreparedStore(store_path) as store:
        needed = np.unique(
            np.concatenate([pred.images[[q for q, _, _ in rows]], pred.images[np.concatenate(shown_rows)]])
        )
        pixels = dict(zip(needed.tolist(), store.images(needed)))
    query_images = np.stack([pixels[int(pred.images[q])] for q, _, _ in rows])
    retrieved = np.stack([np.stack([pixels[int(pred.images[c])] for c in shown]) for shown in shown_rows])
    return plot_retrievals(query_images, retrieved, path, titles=titles)


def retrieval_figures(
    predictions: Sequence[SubjectPredictions],
    stores: Mapping[str, str | Path],
    roi_sets: Mapping[str, pd.DataFrame],
    roi_set: str | None,
    out_dir: str | Path,
    n_examples: int = 3,
    top_k: int = 5,
) -> list[Path]:
    """One retrieval figure per subject in ``out_dir`` (the per-ROI rows use ROI set ``roi_set`` if given)."""
    from afo.figures.probing import file_stem

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for pred in predictions:
        labels = subject_roi_labels(roi_sets[roi_set], pred) if roi_set is not None else None
        paths.append(
            retrieval_figure(
                pred,
                stores[pred.dataset],
                out_dir / f"{file_stem(pred.dataset, pred.subject)}.png",
                labels,
                roi_set or "roi",
                n_examples,
                top_k,
            )
        )
    return paths
