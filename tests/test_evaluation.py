"""Evaluation from prediction files (afo.evaluation): assembling per-ROI files, split means, r and r_test_norm."""

from __future__ import annotations

import numpy as np
import pytest

from afo.data.folder import prepare
from afo.data.repeats import average_repeats
from afo.data.store import SPLIT_CODE, PreparedStore
from afo.evaluation.predictions import PredictionError, assemble, split_predictions
from afo.evaluation.scores import normalised_score, split_scores
from afo.io.predictions import read_predictions, write_predictions
from afo.metrics import pearson_r


def test_normalised_score_is_signed_and_needs_a_noise_ceiling():
    r = np.array([0.5, -0.5, 0.5, 0.5])
    nc = np.array([50.0, 50.0, np.nan, 0.0])
    score = normalised_score(r, nc)
    assert score[0] == pytest.approx(0.5) and score[1] == pytest.approx(-0.5)
    assert np.isnan(score[2]) and np.isnan(score[3])


@pytest.fixture
def store(folder_dataset, tmp_path):
    prepare(folder_dataset, tmp_path / "s.h5", image_size=8)
    return tmp_path / "s.h5"


def _measured_predictions(store_path, voxels, noise, seed=0):
    """Predictions = the measured val+test means of ``voxels`` plus noise, per subject of the store."""
    rng = np.random.default_rng(seed)
    out = {}
    with PreparedStore(store_path) as s:
        for subject in s.subjects:
            rows = s.trial_split(subject) != SPLIT_CODE["train"]
            images, means = average_repeats(s.responses(subject)[:, voxels][rows], s.trial_image(subject)[rows])
            out[f"tiny/{subject}"] = (images, np.asarray(voxels), means + noise * rng.normal(size=means.shape))
    return out


def test_split_scores_match_pearson_r_of_the_split_means(store, tmp_path):
    write_predictions(tmp_path / "p.h5", _measured_predictions(store, np.arange(10), 0.0), dtype="float32")
    scores = split_scores([tmp_path / "p.h5"], {"tiny": store})
    assert len(scores) == 20 and np.allclose(scores["r_test"], 1.0) and np.allclose(scores["r_val"].dropna(), 1.0)
    # The same numbers as pearson_r on the measured test means.
    noisy = _measured_predictions(store, np.arange(10), 0.5, seed=1)
    write_predictions(tmp_path / "n.h5", noisy, dtype="float32")
    [p] = [p for p in split_predictions([tmp_path / "n.h5"], {"tiny": store}, "test") if p.subject == "subj01"]
    expected = pearson_r(p.predicted, p.measured)
    got = split_scores([tmp_path / "n.h5"], {"tiny": store})
    np.testing.assert_allclose(got[got["subject"] == "subj01"]["r_test"], expected, rtol=1e-6)


def test_per_roi_files_assemble_into_one_model(store, tmp_path):
    write_predictions(tmp_path / "a.h5", _measured_predictions(store, np.arange(0, 5), 0.0), dtype="float32")
    write_predictions(tmp_path / "b.h5", _measured_predictions(store, np.arange(5, 10), 0.0), dtype="float32")
    both = assemble([tmp_path / "b.h5", tmp_path / "a.h5"])
    images, voxels, pred = both["tiny/subj01"]
    whole = _measured_predictions(store, np.arange(10), 0.0)["tiny/subj01"]
    np.testing.assert_array_equal(voxels, np.arange(10))
    np.testing.assert_allclose(pred, whole[2], rtol=1e-6)
    with pytest.raises(PredictionError, match="same voxel"):
        assemble([tmp_path / "a.h5", tmp_path / "a.h5"])


def test_missing_split_images_are_named(store, tmp_path):
    full = _measured_predictions(store, np.arange(10), 0.0)
    cut = {k: (images[1:], voxels, pred[1:]) for k, (images, voxels, pred) in full.items()}
    write_predictions(tmp_path / "cut.h5", cut, dtype="float32")
    with pytest.raises(PredictionError, match="lack"):
        split_scores([tmp_path / "cut.h5"], {"tiny": store})


def test_prediction_file_dtype(tmp_path):
    pred = {"d/s": (np.arange(3), np.arange(2), np.full((3, 2), 1 / 3))}
    write_predictions(tmp_path / "16.h5", pred)
    write_predictions(tmp_path / "32.h5", pred, dtype="float32")
    assert read_predictions(tmp_path / "32.h5")["d/s"][2][0, 0] == np.float32(1 / 3)
    assert read_predictions(tmp_path / "16.h5")["d/s"][2][0, 0] != np.float32(1 / 3)


def test_headline_numbers(tmp_path):
    import json

    import pandas as pd

    from afo.evaluation.headline import headline_table, write_headline

    pd.DataFrame({"dataset": ["a", "a"], "area": ["all", "V1"], "afo": [0.5, 0.6], "naivemix": [0.4, 0.5]}).to_csv(
        tmp_path / "c.csv", index=False
    )
    pd.DataFrame(
        {
            "dataset": "a",
            "subject": ["1", "2", "1"],
            "roi_set": ["all", "all", "veroi"],
            "roi": ["all", "all", "0"],
            "top1": [0.2, 0.4, 0.9],
            "chance_top1": 0.1,
        }
    ).to_csv(tmp_path / "r.csv", index=False)
    pd.DataFrame(
        {"extractor": "afo", "dataset": "h", "role": ["holdout"] * 3 + ["train"], "r_test": [0.1, 0.2, 0.3, 0.9]}
    ).to_csv(tmp_path / "p.csv", index=False)
    (tmp_path / "s.json").write_text(
        json.dumps({"datasets": {"a": {"retinotopy": {"mean_r_x": 0.9, "mean_r_y": 0.8}}}})
    )
    table = headline_table(tmp_path / "c.csv", tmp_path / "r.csv", tmp_path / "p.csv", tmp_path / "s.json")
    values = dict(zip(table["section"], zip(table["value"], table["reference"])))
    assert values["Encoding"] == (0.5, 0.4)
    assert values["Decoding"][0] == pytest.approx(0.3) and values["Decoding"][1] == pytest.approx(0.1)
    assert values["Linear probing (holdout)"][0] == pytest.approx(0.2)
    assert values["Synthetic brain"] == (0.9, 0.8)
    assert "afo at a glance" in write_headline(table, tmp_path / "h.html").read_text()
    assert list(headline_table(tmp_path / "c.csv")["section"]) == ["Encoding"]
    # The front page opens with the training jobs that stopped at their cap, each by name.
    pd.DataFrame(
        {
            "model": ["stage0/seed0", "afo/stage1/roi2", "afo/stage3"],
            "stop_reason": ["patience", "max_epochs", "patience"],
            "epochs": [40, 30, 50],
            "best_epoch": [30, 30, 40],
            "val_r": [0.5, 0.4, 0.6],
        }
    ).to_csv(tmp_path / "t.csv", index=False)
    table = headline_table(tmp_path / "c.csv", training=tmp_path / "t.csv")
    assert list(table["section"]) == ["Training", "Training", "Encoding"]
    assert table["value"].iloc[0] == 1 and "of 3 training jobs" in table["what"].iloc[0]
    assert "afo/stage1/roi2" in table["what"].iloc[1] and "train.max_epochs" in table["what"].iloc[1]
