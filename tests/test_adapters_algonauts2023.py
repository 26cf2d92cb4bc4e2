"""Algonauts 2023 adapter on a tiny release: two subjects with different vertex counts, images shared between them,
masks with values other than 1, with and without the test responses."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_check_counts_store
from fixtures.algonauts2023 import SUBJECTS, write_algonauts2023, write_stim_info, write_surfaces
from fixtures.formats import IMG, decode_id

from afo.data import algonauts2023
from afo.data.files import DatasetFormatError
from afo.data.options import AdapterOptionError
from afo.data.store import SPLIT_CODE, PreparedStore


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    base = tmp_path_factory.mktemp("alg23")
    truth = write_algonauts2023(base / "full", test_fmri=True)
    write_algonauts2023(base / "participants", test_fmri=False)
    write_surfaces(base / "surf")
    coco = write_stim_info(base / "nsd_stim_info_merged.csv", range(300))
    return base, truth, coco


def _options(base, **more):
    return {"fsaverage_surface": str(base / "surf"), "roi_classes": ["prf-visualrois", "streams"], **more}


@pytest.fixture(scope="module")
def prepared(release, tmp_path_factory):
    base, truth, coco = release
    out = tmp_path_factory.mktemp("out") / "alg23.h5"
    report = algonauts2023.prepare(
        base / "full",
        out,
        image_size=IMG,
        options=_options(base, stim_info=str(base / "nsd_stim_info_merged.csv"), val_fraction=0.2),
    )
    return out, report, truth, coco


def test_one_store_images_shared_by_nsd_id(prepared):
    out, report, truth, coco = prepared
    with PreparedStore(out) as store:
        assert store.subjects == ["subj01", "subj02"]
        ids = sorted({i for t in truth.values() for i in t["train_ids"] + t["test_ids"]})
        assert store.image_names() == [f"nsd{i:05d}" for i in ids]  # each shared image stored once
        assert store.image_sources() == [f"coco:{coco[i]}" for i in ids]
        images = store.images()
        assert [decode_id(im) for im in images] == ids
        for subj, t in truth.items():
            rows = store.trial_image(subj)
            assert [ids[r] for r in rows] == t["train_ids"] + t["test_ids"]  # file-name order, train then test
    assert report["test_split"] == "release test responses"


def test_responses_as_released_and_vertices_from_masks(prepared):
    out, _, truth, _ = prepared
    with PreparedStore(out) as store:
        for subj, t in truth.items():
            n_l, n_r = (int(np.count_nonzero(t["masks"][h])) for h in ("lh", "rh"))
            assert (n_l, n_r) == SUBJECTS[subj][2]  # every non-zero mask value counts, 2 as much as 1
            resp = store.responses(subj)
            expected = np.concatenate(
                [np.concatenate([t["lh_train"], t["rh_train"]], 1), np.concatenate([t["lh_test"], t["rh_test"]], 1)]
            )
            np.testing.assert_array_equal(resp, expected)  # not z-scored again
            layout = store.layout(subj)
            assert layout.kind == "fsaverage" and list(layout.structure) == ["lh"] * n_l + ["rh"] * n_r
            np.testing.assert_array_equal(layout.index[:n_l, 0], np.flatnonzero(t["masks"]["lh"]))
            np.testing.assert_array_equal(layout.index[n_l:, 0], np.flatnonzero(t["masks"]["rh"]))
            coords = store.coords(subj)
            assert coords[n_l:, 0].min() > coords[:n_l, 0].max()  # overlapping sphere hemispheres set apart
            nc = np.concatenate([t["lh_nc"], t["rh_nc"]]) * 100  # the release's fraction, stored in percent
            np.testing.assert_allclose(store.noise_ceiling(subj), nc, rtol=1e-6)
            for roi in ("prf-visualrois", "streams"):
                assert list(store.rois(subj, roi)) == t[f"lh_{roi}"] + t[f"rh_{roi}"]


def test_release_test_images_are_the_test_split(prepared):
    out, _, truth, _ = prepared
    with PreparedStore(out) as store:
        names = store.image_names()
        split_of = {}
        for subj, t in truth.items():
            split = store.trial_split(subj)
            n_train = len(t["train_ids"])
            assert (split[n_train:] == SPLIT_CODE["test"]).all()
            assert set(split[:n_train].tolist()) == {SPLIT_CODE["train"], SPLIT_CODE["val"]}
            for r, c in zip(store.trial_image(subj), split):
                assert split_of.setdefault(names[r], c) == c  # one split per NSD id across subjects


def test_without_test_responses_held_out(release, tmp_path):
    base, truth, _ = release
    out = tmp_path / "p.h5"
    with pytest.warns(UserWarning, match="stim_info not set"):
        report = algonauts2023.prepare(base / "participants", out, image_size=IMG, options=_options(base))
    assert report["test_split"] == "held out of the training images"
    with PreparedStore(out) as store:
        train_ids = sorted({i for t in truth.values() for i in t["train_ids"]})
        assert store.image_names() == [f"nsd{i:05d}" for i in train_ids]  # release test images: prediction-only
        for subj, t in truth.items():
            assert store.info(subj).n_trials == len(t["train_ids"])
            assert (store.trial_split(subj) == SPLIT_CODE["test"]).any()
            assert store.subject_attrs(subj)["test_split"] == "held_out"
            assert np.isnan(store.noise_ceiling(subj)).all()  # one response per image: no noise ceiling


def test_check_counts_what_prepare_writes(release, prepared):
    base = release[0]
    options = _options(base, stim_info=str(base / "nsd_stim_info_merged.csv"), val_fraction=0.2)
    assert_check_counts_store("algonauts2023", base / "full", options, prepared[0])


def test_surface_required_and_malformed_files(release, tmp_path):
    base, _, _ = release
    with pytest.raises(AdapterOptionError, match="fsaverage_surface is not set.*nsddata/freesurfer/fsaverage/surf"):
        algonauts2023.check(base / "full", {}, read_data=False)
    bad = tmp_path / "bad"
    write_algonauts2023(bad, test_fmri=True)
    path = bad / "subj02" / "training_split" / "training_fmri" / "rh_training_fmri.npy"
    np.save(path, np.load(path)[:, :-1])
    with pytest.raises(DatasetFormatError, match=r"rh_training_fmri\.npy.*shape.*11 challenge vertices of rh"):
        algonauts2023.prepare(bad, tmp_path / "x.h5", image_size=IMG, options=_options(base))
    assert not (tmp_path / "x.h5").exists()
    (bad / "subj01" / "training_split" / "training_images" / "train-0001_nsd-00000.png").rename(
        bad / "subj01" / "training_split" / "training_images" / "image1.png"
    )
    with pytest.raises(DatasetFormatError, match=r"image1\.png.*train-NNNN_nsd-NNNNN\.png"):
        algonauts2023.check(bad, _options(base), read_data=False)


def test_cli_prepare_and_check_data(release, tmp_path, capsys):
    import json

    import yaml

    from afo.cli import main

    base = release[0]
    options = _options(base, val_fraction=0.2)
    out = tmp_path / "cli.h5"
    argv = ["prepare", "algonauts2023", "--root", str(base / "full"), "--out", str(out), "--image-size", str(IMG)]
    assert main([*argv, "--options", json.dumps(options)]) == 0
    config = yaml.safe_load(open("config.yaml"))
    config["datasets"] = {"alg23": {"format": "algonauts2023", "root": str(base / "full"), "options": options}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["check-data", str(tmp_path / "config.yaml")]) == 0
    rows = json.loads(capsys.readouterr().out)["alg23"]
    with PreparedStore(out) as store:
        assert [r["subject"] for r in rows] == store.subjects
        assert [r["voxels"] for r in rows] == [store.info(s).n_voxels for s in store.subjects]


def _challenge_by_hand(measured: np.ndarray, predicted: np.ndarray, nc_fraction: np.ndarray) -> np.ndarray:
    """The challenge's scoring, written from its description: Pearson r per vertex, r < 0 -> 0, NC 0 -> 1e-14,
    100 r^2 / NC, clipped at 100."""
    from scipy.stats import pearsonr

    r = np.array([pearsonr(measured[:, v], predicted[:, v])[0] for v in range(measured.shape[1])])
    r[r < 0] = 0
    nc = nc_fraction.copy()
    nc[nc == 0] = 1e-14
    return np.minimum(100 * r**2 / nc, 100)


def test_challenge_score_in_summary_and_headline(prepared, tmp_path):
    import pandas as pd

    from afo.evaluation.headline import headline_table
    from afo.evaluation.scores import challenge_labels, challenge_score, summary_table
    from afo.metrics import pearson_r

    out, _, truth, _ = prepared
    rng = np.random.default_rng(4)
    frames, by_hand = [], {}
    with PreparedStore(out) as store:
        for subj, t in truth.items():
            measured = np.concatenate([t["lh_test"], t["rh_test"]], 1)
            predicted = measured + rng.normal(0, 1.5, measured.shape)  # some vertices get r < 0
            nc = np.concatenate([t["lh_nc"], t["rh_nc"]])
            by_hand[subj] = _challenge_by_hand(measured, predicted, nc)
            r = pearson_r(predicted, measured)
            np.testing.assert_allclose(challenge_score(r, store.noise_ceiling(subj)), by_hand[subj], rtol=1e-4)
            frames.append(
                pd.DataFrame(
                    {
                        "dataset": "alg23",
                        "subject": subj,
                        "voxel": np.arange(r.size),
                        "roi": "",
                        "r_test": r,
                        "nc": store.noise_ceiling(subj),
                        "r_test_norm": np.nan,
                    }
                )
            )
    assert np.any(np.concatenate(list(by_hand.values())) == 100) and np.any(by_hand["subj01"] == 0)
    voxels = pd.concat(frames, ignore_index=True)
    labels = challenge_labels({"alg23": out})
    summary = summary_table(voxels, challenge=labels).set_index(["subject", "roi"])
    for subj, scores in by_hand.items():
        row = summary.loc[(subj, "all")]
        assert row["challenge_score_median"] == pytest.approx(np.median(scores), rel=1e-4)
        assert row["challenge_score_mean"] == pytest.approx(np.mean(scores), rel=1e-4)
        v1v = np.array(truth[subj]["lh_prf-visualrois"] + truth[subj]["rh_prf-visualrois"]) == "V1v"
        row = summary.loc[(subj, "prf-visualrois/V1v")]
        assert row["challenge_score_median"] == pytest.approx(np.median(scores[v1v]), rel=1e-4)
    pooled = np.concatenate(list(by_hand.values()))
    assert summary.loc[("all", "all"), "challenge_score_median"] == pytest.approx(np.median(pooled), rel=1e-4)
    assert summary.loc[("all", "all"), "challenge_score_mean"] == pytest.approx(np.mean(pooled), rel=1e-4)
    # datasets without fsaverage layout or noise ceiling get no score
    plain = summary_table(voxels.assign(dataset="other"), challenge=labels)
    assert plain["challenge_score_median"].isna().all()

    comparison = tmp_path / "comparison.csv"
    pd.DataFrame({"dataset": ["alg23"], "area": ["all"], "afo": [0.3]}).to_csv(comparison, index=False)
    summary.reset_index().to_csv(tmp_path / "summary.csv", index=False)
    head = headline_table(comparison, summary=tmp_path / "summary.csv")
    score = head[head["section"] == "Encoding (Algonauts 2023 score)"]
    assert score["value"].iloc[0] == pytest.approx(np.median(pooled), rel=1e-4)
    assert "as published" in score["what"].iloc[1] and "70.85, 63.52, 61.57" in score["what"].iloc[1]
    # the front page says where the test trials came from (summary.csv's per-subject test_split)
    for split, words in (("release", "on the release's test responses"), ("held_out", "not comparable with the")):
        summary.reset_index().assign(test_split=split).to_csv(tmp_path / "summary.csv", index=False)
        head = headline_table(comparison, summary=tmp_path / "summary.csv")
        assert words in head.loc[head["section"] == "Encoding (Algonauts 2023 score)", "what"].iloc[0]


def test_fill_uncovered_vertices_with_the_hemisphere_mean():
    from afo.submission import SubmissionError, fill_uncovered

    predicted = np.array([[1.0, 3.0, 10.0], [2.0, 4.0, 20.0]])
    full, filled = fill_uncovered(predicted, np.array([0, 2, 4]), [3, 2])  # vertices 1 (lh) and 3 (rh) uncovered
    np.testing.assert_allclose(full, [[1, 2, 3, 10, 10], [2, 3, 4, 20, 20]])
    assert filled == 2 and full.dtype == np.float32
    with pytest.raises(SubmissionError, match="beyond the release's 5 challenge vertices"):
        fill_uncovered(predicted, np.array([0, 2, 5]), [3, 2])


@pytest.mark.usefixtures("one_torch_thread")
def test_submission_layout(release, prepared, tmp_path):
    """`afo predict --submission`: a model trained on the store predicts each subject's test images in file-name
    order, every challenge vertex, float32."""
    import timm
    import torch
    from test_api import BACKBONE, MODEL, TRAIN, _backbone

    from afo.cli import main
    from afo.features import extract_features
    from afo.training.fit import TrainSpec, fit

    base, truth = release[0], release[1]
    out = prepared[0]
    torch.manual_seed(0)
    weights = tmp_path / "backbone.pth"
    backbone = timm.create_model(BACKBONE["name"], num_classes=0, img_size=16, **BACKBONE["model_kwargs"])
    torch.save(backbone.state_dict(), weights)
    extract_features(out, tmp_path / "features.h5", _backbone(weights))
    spec = TrainSpec(
        stores={"alg23": str(out)}, features={"alg23": str(tmp_path / "features.h5")}, model=MODEL, train=TRAIN
    )
    fit(spec, tmp_path / "m")
    argv = ["predict", "--model", str(tmp_path / "m" / "model.pt"), "--submission", str(tmp_path / "sub")]
    assert main([*argv, "--release", str(base / "full"), "--device", "cpu"]) == 0
    for subj, t in truth.items():
        for h in ("lh", "rh"):
            pred = np.load(tmp_path / "sub" / subj / f"{h}_pred_test.npy")
            assert pred.dtype == np.float32 and pred.shape == (len(t["test_ids"]), np.count_nonzero(t["masks"][h]))
            assert np.isfinite(pred).all()
    import afo

    files = sorted((base / "full" / "subj02" / "test_split" / "test_images").glob("test-*.png"))
    expected = afo.load(tmp_path / "m" / "model.pt", device="cpu").predict(files, subject="alg23/subj02")
    n_lh = np.count_nonzero(truth["subj02"]["masks"]["lh"])
    np.testing.assert_allclose(np.load(tmp_path / "sub" / "subj02" / "lh_pred_test.npy"), expected[:, :n_lh], rtol=1e-5)
    assert main([*argv, "--out", str(tmp_path / "x.h5"), "--release", str(base / "full")]) == 2


@pytest.mark.slow  # the whole recipe on the tiny release up to the front page: about 2 minutes on 2 cores
def test_workflow_runs_to_the_challenge_score_on_the_front_page(release, tmp_path):
    import json

    import pandas as pd
    import yaml
    from fixtures.workflow import TINY, snakemake

    base = release[0]
    config = json.loads(json.dumps(TINY))
    config["datasets"] = {
        "alg23": {
            "format": "algonauts2023",
            "root": str(base / "full"),
            "role": "train",
            "options": _options(base, val_fraction=0.2),
        }
    }  # the release has ~20 training images per subject: a fifth as validation gives each subject 3 or more
    config["evaluation"]["area_groups"] = {"prf-visualrois/V1v": "early", "streams/ventral": "late"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(tmp_path, "results/headline.html")

    summary = pd.read_csv(tmp_path / "results/encoding/afo/summary.csv", dtype={"subject": str})
    per_subject = summary[(summary["roi"] == "all") & (summary["subject"] != "all")]
    assert sorted(per_subject["subject"]) == ["subj01", "subj02"]
    assert set(per_subject["test_split"]) == {"release"}
    assert per_subject["challenge_score_median"].between(0, 100).all()
    classes = set(summary.loc[summary["subject"] == "subj01", "roi"])
    assert {"prf-visualrois/V1v", "streams/ventral"} <= classes
    pooled = summary[(summary["roi"] == "all") & (summary["subject"] == "all")].iloc[0]
    page = (tmp_path / "results/headline.html").read_text()
    assert "alg23: challenge score of afo on the release&#x27;s test responses" in page or (
        "alg23: challenge score of afo on the release's test responses" in page
    )
    assert "70.85" in page and f"{pooled['challenge_score_median']:.3f}" in page
