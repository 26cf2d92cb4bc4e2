"""Brain decoding by image retrieval with trained encoding models (paper section 4.5, Figures 7-9).

For every subject, the candidates are the subject's test images; the query for each test image is the measured
response averaged over the image's repeats; each candidate's predicted response comes from the model's prediction
file(s) (:func:`afo.evaluation.predictions.split_predictions`) and the candidates are ranked by Pearson r between prediction and query over the selected voxels
(:func:`afo.decoding.ranking.rank_candidates`): all voxels, or one ROI of an ROI set. A query counts as a top-k hit when
its own image is among the k best candidates (ties count against it, see :func:`afo.decoding.ranking.retrieval_accuracy`);
chance is k / n_candidates.

ROI sets of ``retrieval.csv``: ``all`` (every modelled voxel); the model's ROI table (named after its file:
``veroi``, ``random`` or ``dataset``); ``area`` (the dataset's own ROI labels in the prepared store). An ROI with
fewer than 3 voxels in a subject has no row for that subject.

Models are model files, or per-ROI model files assembled (each voxel predicted by its own ROI's model), exactly
as in :func:`afo.evaluation.scores.voxel_table`.

:func:`rank_user_images` ranks a user's own candidate images for a user's own response pattern (``afo decode``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from afo.data.store import PreparedStore
from afo.decoding.ranking import rank_candidates, retrieval_accuracy
from afo.errors import UserError
from afo.evaluation.predictions import SubjectPredictions
from afo.io.tables import ordered, read_roi_table
from afo.metrics import MIN_PAIRS


class DecodeInputError(UserError, ValueError):
    """A user's candidate images, response pattern or subject do not fit the model; the message says how."""


def roi_labels_from_stores(stores: Mapping[str, str | Path], roi_set: str) -> pd.DataFrame:
    """The datasets' own labels (ROI set ``roi_set`` of the prepared stores; '' = none is left out)."""
    rows = []
    for dataset, path in sorted(stores.items()):
        with PreparedStore(path) as store:
            for subject in store.subjects:
                if roi_set not in store.info(subject).roi_sets:
                    continue
                labels = store.rois(subject, roi_set).astype(str)
                keep = np.flatnonzero(labels != "")
                rows.append(pd.DataFrame({"dataset": dataset, "subject": subject, "voxel": keep, "roi": labels[keep]}))
    if not rows:
        return pd.DataFrame(columns=["dataset", "subject", "voxel", "roi"])
    return pd.concat(rows, ignore_index=True)


def subject_roi_labels(labels: pd.DataFrame, pred: SubjectPredictions) -> np.ndarray:
    """Label of each of the subject's predicted voxels ('' = none) from an ROI table."""
    mine = labels[(labels["dataset"] == pred.dataset) & (labels["subject"] == pred.subject)]
    lookup = dict(zip(mine["voxel"].astype(int), mine["roi"].astype(str)))
    return np.array([lookup.get(int(v), "") for v in pred.voxels], dtype=object)


def retrieval_table(
    predictions: Sequence[SubjectPredictions],
    roi_sets: Mapping[str, pd.DataFrame],
    ks: Sequence[int] = (1, 5),
) -> pd.DataFrame:
    """retrieval.csv: one row per subject, ROI set and ROI (``all``/``all`` first).

    Columns: dataset, subject, roi_set, roi, n_voxels, n_candidates, n_queries, top1, top5 (one per k), chance_top1.
    """
    rows = []
    for p in predictions:
        true = np.arange(p.images.size)
        conditions = [("all", "all", np.ones(p.voxels.size, dtype=bool))]
        for set_name, labels in roi_sets.items():
            per_voxel = subject_roi_labels(labels, p)
            for roi in ordered(set(per_voxel) - {""}):
                conditions.append((set_name, roi, per_voxel == roi))
        for set_name, roi, mask in conditions:
            if mask.sum() < MIN_PAIRS or p.images.size == 0:
                continue
            result = retrieval_accuracy(p.predicted, p.measured, true, voxel_mask=mask, ks=ks)
            row = {
                "dataset": p.dataset,
                "subject": p.subject,
                "roi_set": set_name,
                "roi": roi,
                "n_voxels": int(mask.sum()),
                "n_candidates": result["n_candidates"],
                "n_queries": result["n_queries"],
            }
            row.update({f"top{k}": result[f"top{k}"] for k in ks})
            row["chance_top1"] = 1.0 / result["n_candidates"]
            rows.append(row)
    columns = [
        "dataset",
        "subject",
        "roi_set",
        "roi",
        "n_voxels",
        "n_candidates",
        "n_queries",
        *[f"top{k}" for k in ks],
        "chance_top1",
    ]
    return pd.DataFrame(rows, columns=columns)


# -- a user's own images and response ---------------------------------------------------------------------


def read_response(path: str | Path) -> np.ndarray:
    """A response array from a ``.npy`` file (``afo decode --response``); anything else is named with the fix."""
    path = Path(path)
    fix = "save the response array with numpy.save (real numbers, [n_voxels] or [n_queries, n_voxels])"
    if not path.is_file():
        raise DecodeInputError(f"--response {path}: no such file; {fix}")
    try:
        value = np.load(path, allow_pickle=False)  # never unpickle a user's file
    except (ValueError, EOFError, OSError) as err:  # not .npy, truncated, pickled objects, text
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DecodeInputError(f"--response {path}: not a readable .npy array ({reason}); {fix}") from err
    if not isinstance(value, np.ndarray):  # an .npz archive
        value.close()
        raise DecodeInputError(f"--response {path}: an .npz archive, not one array; {fix}")
    return value


def _match_response(
    response: np.ndarray, model_voxels: np.ndarray, subject: str, n_dataset_voxels: int | None = None
) -> np.ndarray:
    """The response restricted to the model's voxels: float32 [Q, n_model_voxels].

    Accepted: one value per modelled voxel (the model's voxel order = sorted store indices), or one value per
    voxel of the subject in the dataset (responses.npy column order; the model's voxels are picked from it).
    ``n_dataset_voxels`` is the subject's voxel count in its dataset (model files from version 3); without it
    (older files) any length beyond the largest modelled index is taken as a dataset-length response, with a warning.
    """
    response = np.asarray(response)
    if response.dtype.kind not in "fiu":  # a cast would drop imaginary parts or turn labels into numbers
        raise DecodeInputError(
            f"response has dtype {response.dtype}, not real numbers; save the real quantity you mean (e.g. the "
            "magnitude or the real part) as float32"
        )
    response = response.astype(np.float32)
    if response.ndim == 1:
        response = response[None, :]
    if response.ndim != 2:
        raise DecodeInputError(f"response must be [n_voxels] or [n_queries, n_voxels], got shape {response.shape}")
    n, n_model = response.shape[1], model_voxels.size
    if n == n_model:
        return response
    if n == n_dataset_voxels or (n_dataset_voxels is None and n > int(model_voxels.max())):
        if n_dataset_voxels is None:
            warnings.warn(
                f"response has {n} voxels: taken as subject {subject!r}'s dataset voxels (responses.npy columns); "
                "this model file does not record the dataset's voxel count, so the length cannot be checked",
                stacklevel=3,
            )
        return response[:, model_voxels]
    in_dataset = f"{n_dataset_voxels}" if n_dataset_voxels is not None else f"at least {int(model_voxels.max()) + 1}"
    raise DecodeInputError(
        f"response has {n} voxels; subject {subject!r} of this model has {n_model} modelled voxels of {in_dataset} "
        "in its dataset: give one value per modelled voxel or per dataset voxel of this subject (a response of "
        "another subject has another length)"
    )


def match_response(
    response: np.ndarray,
    model_voxels: np.ndarray,
    subject: str,
    voxel_mask: np.ndarray | None = None,
    n_dataset_voxels: int | None = None,
) -> np.ndarray:
    """A user's response checked and restricted to the model's voxels, float32 [Q, n] (see :func:`_match_response`);
    a query without enough finite, varying values on the matched voxels is a :class:`DecodeInputError`."""
    measured = _match_response(response, np.asarray(model_voxels), subject, n_dataset_voxels)
    _check_queries(measured, voxel_mask)
    return measured


def _check_queries(measured: np.ndarray, voxel_mask: np.ndarray | None) -> None:
    """Every query must have enough finite, varying values to correlate, else a :class:`DecodeInputError`."""
    selected = measured if voxel_mask is None else measured[:, voxel_mask]
    for q, row in enumerate(selected):
        finite = row[np.isfinite(row)]
        if finite.size < MIN_PAIRS:
            raise DecodeInputError(
                f"response row {q}: {finite.size} finite value(s) on the matched voxels, at least {MIN_PAIRS} are "
                "needed to correlate; NaN marks a missing value, not every value"
            )
        if finite.min() == finite.max():
            raise DecodeInputError(
                f"response row {q}: every matched value is {finite[0]:g}; a constant pattern has no correlation "
                "with any image, give the measured pattern"
            )


def rank_user_images(
    predicted: np.ndarray,
    names: Sequence[str],
    response: np.ndarray,
    model_voxels: np.ndarray,
    subject: str,
    voxel_mask: np.ndarray | None = None,
    n_dataset_voxels: int | None = None,
) -> pd.DataFrame:
    """Rank a user's candidate images for measured response pattern(s) of one subject (``afo decode``).

    Args:
        predicted: [C, n] the model's predictions for the C candidates (``afo.api.Model.predict``), n = modelled voxels.
        names: [C] the candidates' names (file names).
        response: [V] or [Q, V] measured (repeat-averaged) responses, see :func:`_match_response`; NaN = missing.
        model_voxels: [n] the subject's modelled voxels (indices of its dataset).
        subject: subject key, for messages.
        voxel_mask: optional bool mask over the model's voxels of the subject (an ROI).
        n_dataset_voxels: the subject's voxel count in its dataset, when the model file records it.

    Returns:
        one row per query and candidate: query, rank (0 = best), image (name), r.
    """
    measured = match_response(response, model_voxels, subject, voxel_mask, n_dataset_voxels)
    order, scores = rank_candidates(np.asarray(predicted), measured, voxel_mask=voxel_mask)
    rows = []
    for q in range(order.shape[0]):
        for rank, c in enumerate(order[q]):
            rows.append({"query": q, "rank": rank, "image": names[c], "r": scores[q, c]})
    return pd.DataFrame(rows)


def decode_model(
    prediction_files: Sequence[str | Path],
    stores: Mapping[str, str | Path],
    rois: str | Path | None,
    dataset_roi_set: str,
    out: str | Path,
) -> tuple[list[SubjectPredictions], dict[str, pd.DataFrame]]:
    """retrieval.csv of a model from its prediction files (one per ROI model if assembled).

    ROI sets: the model's ROI table (named after its file stem) and the dataset's own labels as ``area``.
    Returns the subjects' test predictions and the ROI sets, for the retrieval figures.
    """
    from afo.evaluation.predictions import split_predictions
    from afo.io.tables import write_csv

    predictions = split_predictions(prediction_files, stores, "test")
    roi_sets = {}
    if rois is not None:
        roi_sets[Path(rois).stem] = read_roi_table(rois)[["dataset", "subject", "voxel", "roi"]]
    if dataset_roi_set:
        roi_sets["area"] = roi_labels_from_stores(stores, dataset_roi_set)
    write_csv(retrieval_table(predictions, roi_sets), out)
    return predictions, roi_sets
