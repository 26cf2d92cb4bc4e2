"""An Algonauts 2023 submission from a model file: ``<out>/subjNN/{lh,rh}_pred_test.npy`` for the release's test images.

Each file is float32 [test images, challenge vertices of the hemisphere]: rows in the order of the sorted test image
file names (``test-NNNN_nsd-NNNNN.png``), columns every challenge vertex (the non-zero entries of the subject's
``{lh,rh}.all-vertices_fsaverage_space.npy``, ascending), the layout the challenge scores. The model's voxels of an
``algonauts2023`` store are those vertices, left hemisphere then right (:mod:`afo.data.algonauts2023`).

A vertex the model does not predict (a bad voxel masked in the store, or one outside the ROI it was trained on)
gets, per image, the mean prediction of the predicted vertices of its hemisphere: a constant column would leave its
Pearson r undefined, which spoils a median over vertices. Their number is returned per subject.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afo.errors import UserError

log = logging.getLogger("afo")


class SubmissionError(UserError):
    """The model and the release do not fit together (no shared subject, vertices beyond the release's)."""


def _model_subjects(subjects: Sequence[str], names: Sequence[str], dataset: str | None) -> dict[str, str]:
    """Release subject folder -> the model's subject key (``<dataset>/<subject>``) that predicts it."""
    keys: dict[str, list[str]] = {}
    for key in subjects:
        ds, subject = key.split("/", 1)
        if subject in names and (dataset is None or ds == dataset):
            keys.setdefault(subject, []).append(key)
    ambiguous = {s: k for s, k in keys.items() if len(k) > 1}
    if ambiguous:
        raise SubmissionError(
            f"subjects {sorted(ambiguous)} are in several of the model's datasets ({ambiguous}); name the "
            "algonauts2023 dataset with --dataset"
        )
    if not keys:
        raise SubmissionError(
            f"the model predicts none of the release's subjects {list(names)} (its subjects: {list(subjects)})"
        )
    return {s: k[0] for s, k in keys.items()}


def fill_uncovered(predicted: np.ndarray, voxels: np.ndarray, counts: Sequence[int]) -> tuple[np.ndarray, int]:
    """[images, sum(counts)] from the predictions [images, len(voxels)] of the given columns; the other columns of
    each hemisphere (``counts``: columns per hemisphere, in order) get the mean of its predicted columns (0 when it
    has none). Returns the array and the number of filled columns."""
    total = int(sum(counts))
    if voxels.size and (voxels.min() < 0 or voxels.max() >= total):
        raise SubmissionError(
            f"the model predicts voxel {int(voxels.max())}, beyond the release's {total} challenge vertices: it "
            "was not trained on this release's algonauts2023 store"
        )
    out = np.empty((predicted.shape[0], total), dtype=np.float32)
    covered = np.zeros(total, dtype=bool)
    covered[voxels] = True
    out[:, voxels] = predicted
    start = 0
    for n in counts:
        hemi = slice(start, start + n)
        own = covered[hemi]
        fill = out[:, hemi][:, own].mean(axis=1, keepdims=True) if own.any() else np.zeros((len(out), 1))
        out[:, hemi] = np.where(own, out[:, hemi], fill)
        start += n
    return out, int((~covered).sum())


def write_submission(
    model_path: str | Path,
    release: str | Path,
    out_dir: str | Path,
    dataset: str | None = None,
    batch_size: int = 32,
    device: str = "auto",
    weights: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/subjNN/{lh,rh}_pred_test.npy`` for every subject of the release the model predicts."""
    from afo.api import load
    from afo.data.algonauts2023 import HEMIS, Subject
    from afo.io import atomic_path

    release = Path(release)
    names = sorted(p.name for p in release.glob("subj[0-9][0-9]") if p.is_dir())
    model = load(model_path, device=device, weights=weights)
    keys = _model_subjects(model.subjects, names, dataset)
    report: dict[str, Any] = {"out": str(out_dir), "subjects": {}}
    for name, key in sorted(keys.items()):
        subject = Subject(release, name)
        counts = [int(subject.vertices[h].size) for h in HEMIS]
        log.info("%s: predicting %d test images of %s", model_path, len(subject.test_files), name)
        predicted = np.asarray(model.predict(subject.test_files, subject=key, batch_size=batch_size))
        full, filled = fill_uncovered(predicted, model.voxels(key)["voxel"].to_numpy(), counts)
        folder = Path(out_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        for h, part in zip(HEMIS, np.split(full, [counts[0]], axis=1)):
            with atomic_path(folder / f"{h}_pred_test.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, part.astype(np.float32))
        report["subjects"][name] = {"model_subject": key, "images": len(subject.test_files), "filled_vertices": filled}
        if filled:
            log.warning(
                "%s: %d challenge vertices the model does not predict got their hemisphere's mean", name, filled
            )
    return report
