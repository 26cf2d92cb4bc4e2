"""In-distribution vs out-of-distribution scores: a test-only holdout store of a training dataset's subjects
(NSD-synthetic, ``format: nsd_synthetic``) scored with those subjects' heads, next to their own test scores.

The holdout store has the training dataset's subject names and voxels (voxel i of ``subjNN`` is voxel i of the
training store's ``subjNN``), so a model predicts it under the training dataset's name (``heads_of``): its
prediction file (:func:`afo.training.predict.predict_file` with ``{heads_of: holdout store}``) keys subjects
``<heads_of>/<subject>``. :func:`holdout_voxels` scores it with :func:`afo.evaluation.scores.voxel_table`, rows
labelled by the holdout's own name; :func:`ood_table` sets them beside the training dataset's voxels.csv rows.

ood.csv: one row per (dataset_in, dataset_out), subject and roi (plus roi = "all"): n_voxels (voxels scored in
both), mean_r_in, mean_r_out (mean test r over those voxels), median_r_test_norm_in, median_r_test_norm_out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from afo.evaluation.scores import voxel_table, with_roi_all

OOD_COLUMNS = [
    "dataset_in",
    "dataset_out",
    "subject",
    "roi",
    "n_voxels",
    "mean_r_in",
    "mean_r_out",
    "median_r_test_norm_in",
    "median_r_test_norm_out",
]


def holdout_voxels(
    models: Sequence[tuple[str | Path, str | Path]],
    holdout: str,
    store: str | Path,
    heads_of: str,
    rois: str | Path | None = None,
    dataset_roi_set: str = "roi",
    visual_angle: float | None = None,
) -> pd.DataFrame:
    """voxels.csv rows of a holdout store predicted with the ``heads_of`` dataset's heads (``models`` = [(model
    file, its prediction file of the holdout)]), labelled dataset = ``holdout``. ``rois``: the ROI table of the
    ``heads_of`` dataset's voxels, which are the holdout's."""
    table = voxel_table(
        models,
        {heads_of: store},
        rois=rois,
        dataset_roi_set=dataset_roi_set,
        visual_angles={heads_of: visual_angle},
    )
    return table.assign(dataset=holdout)


def ood_table(in_voxels: pd.DataFrame, out_voxels: pd.DataFrame, pairs: Mapping[str, str]) -> pd.DataFrame:
    """ood.csv from voxels.csv rows of the training datasets (``in_voxels``) and of the holdouts
    (``out_voxels``, :func:`holdout_voxels`); ``pairs``: holdout -> the training dataset whose heads scored it.

    Per subject and roi of the training dataset (and roi "all"), over the voxels with a test r in both.
    """
    frames = []
    keys = ["subject", "voxel"]
    for holdout, heads_of in sorted(pairs.items()):
        inside = in_voxels[in_voxels["dataset"] == heads_of][[*keys, "roi", "r_test", "r_test_norm"]]
        outside = out_voxels[out_voxels["dataset"] == holdout][[*keys, "r_test", "r_test_norm"]]
        both = inside.astype({"subject": str}).merge(
            outside.astype({"subject": str}), on=keys, suffixes=("_in", "_out")
        )
        both = both[np.isfinite(both["r_test_in"]) & np.isfinite(both["r_test_out"])]
        both = with_roi_all(both)
        table = (
            both.groupby(["subject", "roi"], sort=True)
            .agg(
                n_voxels=("voxel", "size"),
                mean_r_in=("r_test_in", "mean"),
                mean_r_out=("r_test_out", "mean"),
                median_r_test_norm_in=("r_test_norm_in", "median"),
                median_r_test_norm_out=("r_test_norm_out", "median"),
            )
            .reset_index()
        )
        frames.append(table.assign(dataset_in=heads_of, dataset_out=holdout))
    if not frames:
        return pd.DataFrame(columns=OOD_COLUMNS)
    return pd.concat(frames, ignore_index=True)[OOD_COLUMNS]
