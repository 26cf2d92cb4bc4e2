"""HCP 7T movie adapter on a tiny ConnectomeDB layout (CIFTI-2 dtseries, volumetric NIfTI, mp4 movies)."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from fixtures.formats import HCP_RUNS, HCP_SUBJECTS, IMG, decode_id, write_hcp_movie

from afo.data import hcp_movie
from afo.data.files import DatasetFormatError
from afo.data.store import PreparedStore
from afo.errors import UserError

OPTS = {"runs": [1, 2], "chunk_s": 8, "val_fraction": 0.2}


@pytest.fixture(scope="module")
def hcp(tmp_path_factory):
    root = tmp_path_factory.mktemp("hcp")
    return root, write_hcp_movie(root)


def _z(x):
    return (x - x.mean(0)) / x.std(0)


def _expected_names(run: int) -> list[str]:
    _, _, n_trs, (start, stop) = HCP_RUNS[run]
    names = []
    for k in range(n_trs - 4):  # TR t is paired with frame k = t - 4
        t = k + 0.5
        names.append(f"retest_{int(math.floor(t - start)):03d}" if start <= t < stop else f"MOVIE{run}_{k:04d}")
    return names


def test_group_average_cifti(hcp, tmp_path):
    root, truth = hcp
    out = tmp_path / "hcp.h5"
    opts = {**OPTS, "roi_file": str(root / "visual.dlabel.nii"), "roi_labels": ["V1", "MT"]}
    report = hcp_movie.prepare(root, out, image_size=IMG, options=opts)
    assert report["tr_s"] == 1.0
    cols = np.flatnonzero(np.isin(truth["labels"], [1, 2]))
    with PreparedStore(out) as store:
        assert store.subjects == ["group"]
        names, images = store.image_names(), store.images()
        for name, image in zip(names, images):  # the frame at k + 0.5 s of the right movie
            expected = 1000 + int(name[7:]) if name.startswith("retest") else int(name[5]) * 100 + int(name[7:])
            assert decode_id(image) == expected
        rows = store.trial_image("group")
        assert [names[r] for r in rows] == _expected_names(1) + _expected_names(2)
        resp = store.responses("group")
        start = 0
        for run, (_, _, n_trs, _) in HCP_RUNS.items():
            mean = np.mean([_z(truth["data"][(s, run)]) for s in HCP_SUBJECTS], axis=0)
            np.testing.assert_allclose(resp[start : start + n_trs - 4], mean[4:, cols], atol=1e-4)  # 4 s delay
            start += n_trs - 4
        split = store.trial_split("group")
        is_retest = np.array([names[r].startswith("retest") for r in rows])
        np.testing.assert_array_equal(split == 2, is_retest)
        assert (split == 1).any() and (split == 0).any()
        # whole 8-s chunks share a split
        k = np.r_[np.arange(36), np.arange(32)]
        run = np.r_[np.ones(36), 2 * np.ones(32)]
        for key in {(r, c) for r, c in zip(run[~is_retest], k[~is_retest] // 8)}:
            sel = (~is_retest) & (run == key[0]) & (k // 8 == key[1])
            assert len(set(split[sel])) == 1
        # coordinates: midthickness vertices and the CIFTI volume affine
        bm = truth["bm"]
        coords = store.coords("group")
        for c, g in zip(coords, cols):
            if bm.vertex[g] >= 0:
                side = "L" if "LEFT" in bm.name[g] else "R"
                np.testing.assert_allclose(c, truth["surf"][side][bm.vertex[g]], atol=1e-4)
            else:
                np.testing.assert_allclose(c, nib.affines.apply_affine(truth["vol_affine"], bm.voxel[g]), atol=1e-4)
        assert set(store.rois("group", "roi")) == {"V1", "MT"}
        assert set(store.rois("group", "structure")) <= {"CORTEX_LEFT", "CORTEX_RIGHT", "THALAMUS_LEFT"}
        assert store.subject_attrs("group")["nc_source"] == "repeats"  # the retest clip seen in both runs
        assert np.isfinite(store.noise_ceiling("group")).any()
        # the brain-model axis of the kept grayordinates, for CIFTI maps on the same grayordinates
        layout = store.layout("group")
        assert layout.kind == "cifti"
        np.testing.assert_array_equal(layout.structure, bm.name[cols])
        surface = bm.vertex[cols] >= 0
        np.testing.assert_array_equal(layout.index[surface, 0], bm.vertex[cols][surface])
        np.testing.assert_array_equal(layout.index[~surface], bm.voxel[cols][~surface])
        assert layout.n_vertices == {k: int(v) for k, v in bm.nvertices.items()}
        np.testing.assert_allclose(layout.volume_affine, truth["vol_affine"])
        assert layout.volume_shape == tuple(bm.volume_shape)


def test_volume_per_subject(hcp, tmp_path):
    root, truth = hcp
    out = tmp_path / "vol.h5"
    opts = {
        **OPTS,
        "space": "volume",
        "group_average": False,
        "zscore": False,
        "roi_file": str(root / "visual_mni.nii.gz"),
        "subjects": HCP_SUBJECTS[:2],
    }
    hcp_movie.prepare(root, out, image_size=IMG, options=opts)
    mask_ijk = [tuple(v) for v in np.argwhere(truth["vol_mask"])]
    roi_ijk = np.argwhere(truth["vol_roi"] > 0)
    cols = [mask_ijk.index(tuple(v)) for v in roi_ijk]
    with PreparedStore(out) as store:
        assert store.subjects == sorted(HCP_SUBJECTS[:2])
        for s in HCP_SUBJECTS[:2]:
            resp = store.responses(s)
            np.testing.assert_allclose(resp[:36], truth["data"][(s, 1)][4:, cols], rtol=1e-5)
            np.testing.assert_allclose(store.coords(s), nib.affines.apply_affine(truth["vol_affine"], roi_ijk))
            assert set(store.rois(s, "roi")) == {"5", "6"}


def test_malformed_timing(hcp, tmp_path):
    root, _ = hcp
    bad = tmp_path / "timing.csv"
    bad.write_text("7T_MOVIE1_CC1_v2.mp4\rmovie.block,start,stop,duration\r0,0,4,4\r1.1,4,18,14\r")
    with pytest.raises(DatasetFormatError, match=r"timing\.csv.*'run 2'.*no clip block"):
        hcp_movie.prepare(root, tmp_path / "x.h5", image_size=IMG, options={**OPTS, "clip_timing": str(bad)})
    with pytest.raises(ValueError, match="unknown option"):
        hcp_movie.prepare(root, tmp_path / "x.h5", image_size=IMG, options={"delay": 4})


VERSIONS = ("Post_20140821_version", "Pre_20140821_version")


@pytest.fixture(scope="module")
def hcp_two_versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("hcp2")
    return root, write_hcp_movie(root, versions=VERSIONS)


def _table(path, rows):
    path.write_text("subject,version\n" + "".join(f"{s},{v}\n" for s, v in rows))
    return str(path)


def test_two_movie_versions_need_the_subject_table(hcp_two_versions, tmp_path):
    root, _ = hcp_two_versions
    with pytest.raises(
        DatasetFormatError,
        match=r"7T_movie_resources: holds 2 versions.*Post_20140821_version.*"
        r"Pre_20140821_version.*option movie_versions",
    ):
        hcp_movie.prepare(root, tmp_path / "x.h5", image_size=IMG, options=OPTS)
    partial = _table(tmp_path / "v.csv", [("100610", "Pre_20140821_version")])
    with pytest.raises(DatasetFormatError, match=r"v\.csv: field 'subject' has no row for 2 subject"):
        hcp_movie.prepare(root, tmp_path / "x.h5", image_size=IMG, options={**OPTS, "movie_versions": partial})
    wrong = _table(tmp_path / "w.csv", [(s, "Mid_2015_version") for s in HCP_SUBJECTS])
    with pytest.raises(DatasetFormatError, match=r"w\.csv: field 'version' 'Mid_2015_version' on line 2"):
        hcp_movie.prepare(root, tmp_path / "x.h5", image_size=IMG, options={**OPTS, "movie_versions": wrong})


def test_group_average_only_within_a_movie_version(hcp_two_versions, tmp_path):
    """Subjects are averaged only with subjects who saw the same movie files; each group sees its own frames."""
    root, truth = hcp_two_versions
    table = tmp_path / "versions.tsv"  # tab-separated, with the BOM a spreadsheet writes
    table.write_text("subject\tversion\n100610\tPre_20140821_version\n102311\tV1\n102816\tpost\n", encoding="utf-8-sig")
    table = str(table)
    out = tmp_path / "hcp.h5"
    report = hcp_movie.prepare(root, out, image_size=IMG, options={**OPTS, "movie_versions": table})
    members = {"group-Pre_20140821_version": ["100610", "102311"], "group-Post_20140821_version": ["102816"]}
    assert {g: r["subjects"] for g, r in report["groups"].items()} == members
    with PreparedStore(out) as store:
        assert sorted(store.subjects) == sorted(members)
        names, images = store.image_names(), store.images()
        for group, subjects in members.items():
            tag = group[len("group-") :]
            offset = 2000 if tag.startswith("Pre") else 0
            rows = store.trial_image(group)
            assert [names[r] for r in rows] == [f"{tag}_{n}" for n in _expected_names(1) + _expected_names(2)]
            for r in rows:  # the frame of the group's own movie version
                name = names[r][len(tag) + 1 :]
                expected = (
                    1000 + int(name[7:]) if name.startswith("retest") else offset + int(name[5]) * 100 + int(name[7:])
                )
                assert decode_id(images[r]) == expected
            resp, start = store.responses(group), 0
            for run, (_, _, n_trs, _) in HCP_RUNS.items():
                mean = np.mean([_z(truth["data"][(s, run)]) for s in subjects], axis=0)
                np.testing.assert_allclose(resp[start : start + n_trs - 4, :5], mean[4:, :5], atol=1e-4)
                start += n_trs - 4


def test_identical_movie_versions_are_one_group(tmp_path):
    """Two version folders with byte-identical movies are the same content: one average over everybody."""
    root = tmp_path / "root"
    write_hcp_movie(root, versions=VERSIONS)
    resources = root / "7T_movie_resources"
    for pre in sorted((resources / "Pre_20140821_version").glob("*.mp4")):
        pre.write_bytes((resources / "Post_20140821_version" / pre.name.replace("_v1", "_v2")).read_bytes())
    table = _table(tmp_path / "v.csv", [("100610", "pre"), ("102311", "pre"), ("102816", "post")])
    report = hcp_movie.prepare(root, tmp_path / "one.h5", image_size=IMG, options={**OPTS, "movie_versions": table})
    assert list(report["groups"]) == ["group"]
    assert sorted(report["groups"]["group"]["subjects"]) == sorted(HCP_SUBJECTS)


def _run_path(root, subject, run):
    folder = HCP_RUNS[run][0]
    return (
        root / subject / "MNINonLinear" / "Results" / folder / f"{folder}_Atlas_1.6mm_MSMAll_hp2000_clean.dtseries.nii"
    )


def _shorten(path, n_trs):
    """Rewrite a dtseries with only its first n_trs TRs (a run stopped early)."""
    img = nib.load(path, mmap=False)  # no memory map: the file is overwritten below
    data = np.array(img.dataobj[:n_trs])
    series = nib.cifti2.SeriesAxis(start=0, step=1.0, size=n_trs, unit="SECOND")
    short = nib.cifti2.Cifti2Image(data, nib.cifti2.Cifti2Header.from_axes((series, img.header.get_axis(1))))
    short.nifti_header.set_intent("ConnDenseSeries")
    tmp = path.with_name("short.dtseries.nii")
    nib.save(short, tmp)
    tmp.replace(path)


def test_short_run_is_dropped_with_a_report_or_an_error(tmp_path):
    root = tmp_path / "root"
    truth = write_hcp_movie(root)
    short = _run_path(root, "102816", 2)
    _shorten(short, 30)
    with pytest.raises(DatasetFormatError, match=rf"{short.name}: has 30 TRs, but run 2 has 36.*short_runs: drop"):
        hcp_movie.prepare(root, tmp_path / "x.h5", image_size=IMG, options={**OPTS, "short_runs": "error"})
    out = tmp_path / "hcp.h5"
    with pytest.warns(UserWarning, match=rf"{short.name}: has 30 TRs where run 2 has 36"):
        report = hcp_movie.prepare(root, out, image_size=IMG, options=OPTS)
    assert report["dropped_runs"] == [{"subject": "102816", "run": 2, "file": str(short), "n_trs": 30, "expected": 36}]
    with PreparedStore(out) as store:
        rows = store.trial_image("group")
        names = store.image_names()
        assert [names[r] for r in rows] == _expected_names(1) + _expected_names(2)  # no run is cut short
        resp = store.responses("group")
        run1 = np.mean([_z(truth["data"][(s, 1)]) for s in HCP_SUBJECTS], axis=0)
        run2 = np.mean([_z(truth["data"][(s, 2)]) for s in HCP_SUBJECTS[:2]], axis=0)  # without 102816
        np.testing.assert_allclose(resp[:36, :5], run1[4:, :5], atol=1e-4)
        np.testing.assert_allclose(resp[36:, :5], run2[4:, :5], atol=1e-4)


def test_option_values_are_user_errors(hcp, tmp_path):
    root, _ = hcp
    with pytest.raises(UserError, match=r"hcp_movie: test_clip lists 1 block labels for 2 runs"):
        hcp_movie.prepare(root, tmp_path / "x.h5", image_size=IMG, options={**OPTS, "test_clip": ["1.2"]})
    with pytest.raises(UserError, match=r"hcp_movie: option short_runs='cut' is not one of"):
        hcp_movie.prepare(root, tmp_path / "x.h5", image_size=IMG, options={**OPTS, "short_runs": "cut"})
    both = {**OPTS, "movie_files": {1: "a.mp4", 2: "b.mp4"}, "movie_versions": str(tmp_path / "v.csv")}
    with pytest.raises(UserError, match=r"movie_files .* and movie_versions .* exclude each other"):
        hcp_movie.prepare(root, tmp_path / "x.h5", image_size=IMG, options=both)


def test_run_trs_pins_the_expected_length(tmp_path):
    """When most subjects' copies of a run are short, option run_trs names the complete length."""
    root = tmp_path / "root"
    truth = write_hcp_movie(root)
    n_trs = HCP_RUNS[2][2]
    for s in HCP_SUBJECTS[1:]:
        _shorten(_run_path(root, s, 2), 30)
    with pytest.warns(UserWarning, match=r"100610.*has 36 TRs where run 2 has 30 \(2 of 3 subjects"):
        majority = hcp_movie.prepare(root, tmp_path / "m.h5", image_size=IMG, options=OPTS)
    assert [d["subject"] for d in majority["dropped_runs"]] == ["100610"]
    out = tmp_path / "pinned.h5"
    with pytest.warns(UserWarning, match=r"has 30 TRs where run 2 has 36 \(option run_trs\)"):
        report = hcp_movie.prepare(root, out, image_size=IMG, options={**OPTS, "run_trs": {1: 40, 2: 36}})
    assert sorted(d["subject"] for d in report["dropped_runs"]) == sorted(HCP_SUBJECTS[1:])
    with PreparedStore(out) as store:
        resp = store.responses("group")
        assert resp.shape[0] == (40 - 4) + (n_trs - 4)
        np.testing.assert_allclose(resp[36:, :5], _z(truth["data"][("100610", 2)])[4:, :5], atol=1e-4)
