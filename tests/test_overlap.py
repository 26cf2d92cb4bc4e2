"""Images shared between datasets (afo.data.overlap): identity by source names, pixel matches of copies shipped
resized / cropped / re-encoded, no match for distinct but similar images, and what evaluation and probing leave out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixtures.images import crop, jpeg, natural_scene, shipped_copy
from PIL import Image

from afo.data.overlap import (
    COLUMNS,
    bold5000_source,
    coco_source,
    find_overlap,
    fingerprints,
    hamming,
    left_out_by_dataset,
    left_out_images,
    overlap_summary,
    read_overlap,
    things_source,
)
from afo.data.store import PreparedStore, StoreWriter
from afo.io.tables import write_csv
from afo.simulate.stimuli import make_stimuli

SIZE = 48  # prepare.image_size of the test stores


def _store(path, name, images, splits, names=None, sources=None):
    """A prepared store whose one subject saw every image once, in the given splits."""
    names = names or [f"{name}_{i:02d}.jpg" for i in range(len(images))]
    rng = np.random.default_rng(len(images))
    with StoreWriter(path, name=name, modality="fmri", source="test", image_size=SIZE) as w:
        w.write_images(images, names, sources)
        s = w.subject("subj01", 4)
        s.append(rng.normal(size=(len(images), 4)), np.arange(len(images)), splits)
        s.finish(rng.normal(size=(4, 3)))
    return path


def test_source_names():
    assert coco_source(36) == "coco:36" == coco_source("COCO_train2014_000000000036.jpg")
    assert coco_source("000000000036.jpg") == "coco:36" and coco_source("scene1.jpg") == ""
    assert bold5000_source("COCO_val2014_000000123456.jpg") == "coco:123456"
    assert bold5000_source("n01440764_10110.JPEG") == "imagenet:n01440764_10110"
    assert bold5000_source("airplanecabin1.jpg") == ""
    # THINGS-fMRI names the file, THINGS-MEG a path, THINGS-EEG2 training_images/<nnnnn_concept>/<file>
    assert (
        things_source("aardvark_01b.jpg")
        == things_source("images_meg/aardvark/aardvark_01b.jpg")
        == things_source("training_images/00001_aardvark/aardvark_01b.jpg")
        == "things:aardvark_01b"
    )


def test_hash_is_robust_to_resizing_and_jpeg_and_hamming_counts_bits():
    rng = np.random.default_rng(0)
    image = natural_scene(rng, 120, 160)
    small = np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.BICUBIC))
    copy = np.asarray(
        jpeg(np.asarray(Image.fromarray(image).resize((80, 60))), 75).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
    )
    hashes, grey, flat = fingerprints([small, copy, np.full((SIZE, SIZE, 3), 128, np.uint8)])
    assert grey.shape == (3, 32, 32) and flat.tolist() == [False, False, True]
    assert hamming(hashes[:1], hashes[1:2])[0, 0] <= 4
    np.testing.assert_array_equal(hamming(np.array([0b1011], np.uint64), np.array([0, 2**63], np.uint64)), [[3, 4]])


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Three stores: a (train) and the copies and look-alikes of its images that b (holdout) and c (train) ship."""
    tmp = tmp_path_factory.mktemp("overlap")
    rng = np.random.default_rng(1)
    scenes = [natural_scene(rng, 240, 360) for _ in range(10)]
    view = [x[:, :320] for x in scenes]  # the picture a shows; the last 40 columns let b shift the scene
    # Distinct synthetic stimuli whose hashes are nearest neighbours: the look-alikes a pixel test must not merge.
    stim = make_stimuli(60, SIZE, 8, np.random.default_rng(2)).images
    h, _, flat = fingerprints(list(stim))
    d = hamming(h, h).astype(int)
    np.fill_diagonal(d, 99)
    d[flat] = d[:, flat] = 99
    close = []
    for i, j in zip(*np.unravel_index(np.argsort(d, axis=None), d.shape)):
        if i < j and not {i, j} & {k for pair in close for k in pair}:
            close.append((int(i), int(j)))
        if len(close) == 4:
            break
    a_images = view[:8] + [stim[i] for i, _ in close]
    a_splits = ["train"] * 6 + ["val", "test"] + ["train"] * 4
    a_sources = ["coco:36"] + [""] * 11
    a = _store(tmp / "a.h5", "a", a_images, a_splits, sources=a_sources)
    b_images = [
        shipped_copy(view[0], 0.7, (0.03, 0.02, 0.04, 0.03), 85),  # 0: a0 (train): left out
        shipped_copy(view[1], 1.3, (0.05, 0.05, 0.05, 0.05), 75),  # 1: a1 (train): left out
        jpeg(view[6], 90),  # 2: a6 (val): left out
        Image.fromarray(view[7]).resize((200, 150)),  # 3: a7 (a's test): shared, nothing to leave out
        shipped_copy(view[2], 0.5, (0.02, 0.04, 0.02, 0.0), 80),  # 4: a2, in b's train split: shared, kept
        scenes[3][:, 40:360],  # 5: a3's scene shifted by 12.5 % of its width: another picture
        np.ascontiguousarray(scenes[4][::-1, ::-1][:, :320]),  # 6: another part of a4's texture
        *[stim[j] for _, j in close],  # 7-10: the synthetic look-alikes of a's 8-11
        view[8],
        view[9],  # 11, 12: b's own images
    ]
    b_splits = ["test"] * 4 + ["train"] + ["test"] * 6 + ["train", "train"]
    b = _store(tmp / "b.h5", "b", b_images, b_splits)
    # c names its images' source: its first is COCO 36 cut to a square like NSD's crops (no pixel match).
    nsd_like = Image.fromarray(crop(view[0], 0.0, 0.0, 0.2, 0.2))
    c = _store(
        tmp / "c.h5",
        "c",
        [nsd_like, view[9][::2, ::2], scenes[5]],
        ["test", "train", "train"],
        sources=["coco:36", "", ""],
    )
    table = find_overlap({"a": a, "b": b, "c": c})
    return {"a": a, "b": b, "c": c}, table


def test_shipped_copies_are_found_and_look_alikes_are_not(shared):
    _, table = shared
    assert list(table.columns) == list(COLUMNS)
    pairs = {(r.dataset_a, r.image_a, r.dataset_b, r.image_b, r.method) for r in table.itertuples()}
    assert pairs == {
        ("a", 0, "b", 0, "hash"),
        ("a", 1, "b", 1, "hash"),
        ("a", 6, "b", 2, "hash"),
        ("a", 7, "b", 3, "hash"),
        ("a", 2, "b", 4, "hash"),
        ("a", 0, "c", 0, "source"),
        ("b", 12, "c", 1, "hash"),  # b's own image, halved in size by c
    }
    row = table[(table["dataset_b"] == "c") & (table["method"] == "source")].iloc[0]
    assert row["source"] == "coco:36" and row["name_a"] == "a_00.jpg" and row["split_b"] == "test"
    assert (table.loc[table["method"] == "hash", "correlation"] >= 0.95).all()


def test_left_out_test_images_and_summary(shared, tmp_path):
    stores, table = shared
    write_csv(table, tmp_path / "overlap.csv")
    again = read_overlap(tmp_path / "overlap.csv")
    assert again["name_a"].tolist() == table["name_a"].tolist() and again["source"].tolist()[0] == ""
    trained = ["a", "c"]  # b is a holdout dataset
    # b's test copies of a's train and val images; not the copy of a's test image, not b's train images
    np.testing.assert_array_equal(left_out_images(again, "b", trained), [0, 1, 2])
    np.testing.assert_array_equal(left_out_images(again, "c", trained), [0])  # COCO 36, trained on by a
    assert left_out_images(again, "a", trained).size == 0  # a7's copy is in b, which trains nothing
    assert left_out_by_dataset([], ["a", "b"], trained) == {}
    by_dataset = left_out_by_dataset([tmp_path / "overlap.csv"], ["b"], trained)
    np.testing.assert_array_equal(by_dataset["b"], [0, 1, 2])
    summary = overlap_summary(again, stores, trained, exclude=True).set_index("dataset")
    assert summary.loc["b", "n_test_images"] == 10 and summary.loc["b", "n_test_left_out"] == 3
    assert summary.loc["b", "shared_with"] == "a: 5; c: 1"
    assert overlap_summary(again, stores, trained, exclude=False)["n_test_left_out"].tolist() == [0, 0, 0]


def test_no_shared_image_writes_a_header_only_table(tmp_path):
    rng = np.random.default_rng(5)
    a = _store(tmp_path / "a.h5", "a", [natural_scene(rng, 40, 40) for _ in range(3)], ["train", "train", "test"])
    b = _store(tmp_path / "b.h5", "b", [natural_scene(rng, 40, 40) for _ in range(3)], ["train", "test", "test"])
    table = find_overlap({"a": a, "b": b})
    assert table.empty and list(table.columns) == list(COLUMNS)
    write_csv(table, tmp_path / "o.csv")
    assert left_out_images(tmp_path / "o.csv", "a", ["a", "b"]).size == 0


def test_adapters_record_source_names(tmp_path):
    """BOLD5000 names its COCO images in the file name; NSD's cocoId comes from nsd_stim_info_merged.csv."""
    from fixtures.formats import IMG, write_bold5000, write_nsd

    from afo.data import bold5000, nsd

    write_bold5000(tmp_path / "b5k")
    bold5000.prepare(tmp_path / "b5k", tmp_path / "b5k.h5", image_size=IMG, options={})
    with PreparedStore(tmp_path / "b5k.h5") as store:
        sources = dict(zip(store.image_names(), store.image_sources()))
    assert sources["COCO_train2014_000000000001.jpg"] == "coco:1" and sources["scene81.jpg"] == ""

    write_nsd(tmp_path / "nsd", n_sessions=1, formats=("nifti",))
    info = tmp_path / "nsd" / "nsddata" / "experiments" / "nsd" / "nsd_stim_info_merged.csv"
    pd.DataFrame({"cocoId": 500000 + np.arange(73000), "cocoSplit": "train2017", "nsdId": np.arange(73000)}).to_csv(
        info
    )
    nsd.prepare(tmp_path / "nsd", tmp_path / "nsd.h5", image_size=IMG, options={})
    with PreparedStore(tmp_path / "nsd.h5") as store:
        for name, source in zip(store.image_names(), store.image_sources()):
            assert source == f"coco:{500000 + int(name[3:])}"  # nsdNNNNN: 0-based 73k id


def test_evaluation_and_probing_leave_out_the_given_test_images(folder_dataset, tmp_path):
    """Scores over the remaining test images, the number left out in summary.csv and probe.csv."""
    from afo.data.folder import prepare
    from afo.data.repeats import average_repeats
    from afo.data.store import SPLIT_CODE
    from afo.evaluation.scores import left_out_counts, split_scores, summary_table
    from afo.features import BackboneSpec, extract_features
    from afo.io.predictions import write_predictions
    from afo.metrics import pearson_r
    from afo.probing.benchmark import ExtractorSpec, ProbeSettings, probe_dataset

    prepare(folder_dataset, tmp_path / "tiny.h5", image_size=16)
    rng = np.random.default_rng(0)
    predictions, measured = {}, {}
    with PreparedStore(tmp_path / "tiny.h5") as s:
        for subject in s.subjects:
            rows = s.trial_split(subject) != SPLIT_CODE["train"]  # predictions.h5 holds val and test images
            images, means = average_repeats(s.responses(subject)[rows], s.trial_image(subject)[rows])
            pred = means + rng.normal(size=means.shape)
            predictions[f"tiny/{subject}"] = (images, np.arange(means.shape[1]), pred)
            test = np.isin(images, s.trial_image(subject)[s.trial_split(subject) == SPLIT_CODE["test"]])
            measured[subject] = (images[test], means[test], pred[test])
    write_predictions(tmp_path / "p.h5", predictions, dtype="float32")
    images = measured["subj01"][0]
    leave_out = {"tiny": images[:1]}
    scores = split_scores([tmp_path / "p.h5"], {"tiny": tmp_path / "tiny.h5"}, leave_out)
    _, means, pred = measured["subj01"]
    np.testing.assert_allclose(
        scores[scores["subject"] == "subj01"]["r_test"], pearson_r(pred[1:], means[1:]), rtol=1e-5
    )
    counts = left_out_counts({"tiny": tmp_path / "tiny.h5"}, leave_out)
    assert counts[["n_test_images", "n_test_left_out"]].values.tolist() == [[images.size - 1, 1]] * 2
    voxels = scores.assign(roi="", r_test_norm=np.nan)
    summary = summary_table(voxels, counts)
    assert (summary["n_test_left_out"] == 1).all() and (summary["n_test_images"] == images.size - 1).all()

    spec = BackboneSpec("resnet18", layers=(1,), resolution=32, model_kwargs={})
    extract_features(tmp_path / "tiny.h5", tmp_path / "f.h5", spec, batch_size=8)
    settings = ProbeSettings(n_components=4, cv=2, pool_grid=1)
    args = (ExtractorSpec("backbone", "backbone"), "tiny", tmp_path / "tiny.h5", settings)
    full = probe_dataset(*args, features_path=tmp_path / "f.h5")
    fewer = probe_dataset(*args, features_path=tmp_path / "f.h5", leave_out=images[:1])
    assert (full["n_test"] == images.size).all() and (full["n_test_left_out"] == 0).all()
    assert (fewer["n_test"] == images.size - 1).all() and (fewer["n_test_left_out"] == 1).all()
    assert not np.allclose(full["r_test"], fewer["r_test"])


def test_cli_writes_the_overlap_table(shared, tmp_path, capsys):
    from afo import cli

    stores, table = shared
    args = ["overlap", "--store", f"a={stores['a']}", "--store", f"b={stores['b']}", "--out", str(tmp_path / "o.csv")]
    assert cli.main(args) == 0
    written = read_overlap(tmp_path / "o.csv")
    assert len(written) == len(table[table["dataset_b"] == "b"]) == 5
    assert '"pairs": 5' in capsys.readouterr().out
