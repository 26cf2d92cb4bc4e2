"""check_dataset: per-subject counts of a downloaded dataset, read as the adapters read it, nothing written; and the
adapter contract every registered format fills (afo.data.adapter). Formats with their own test file test their
check there (nsd, things_eeg2, things_meg)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import file_tree, write_folder_dataset
from fixtures.formats import (
    HCP_RUNS,
    HCP_SUBJECTS,
    write_algonauts2021,
    write_bold5000,
    write_glmsingle_nifti,
    write_hcp_movie,
    write_things_fmri,
)

from afo.data.adapter import DatasetAdapter
from afo.data.check import check_dataset
from afo.data.files import DatasetFileNotFoundError, DatasetFormatError
from afo.data.registry import FORMATS, UnknownFormatError, dataset_root, get_adapter
from afo.errors import UserError


def test_every_format_fills_the_adapter_contract():
    for fmt in FORMATS:
        adapter = get_adapter(fmt)
        assert isinstance(adapter, DatasetAdapter) and adapter.name == fmt
        assert callable(adapter.prepare) and callable(adapter.check) and dict(adapter.defaults)
    assert dataset_root({"format": "nsd", "root": "/data/NSD"}) == Path("/data/NSD")
    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow" / "schemas" / "config.schema.yaml").read_text())
    formats = schema["properties"]["datasets"]["additionalProperties"]["properties"]["format"]["enum"]
    assert sorted(formats) == sorted(FORMATS)  # a config may name exactly the registered formats


def test_things_fmri_counts_and_nan_voxels(tmp_path):
    root = tmp_path / "things"
    truth = write_things_fmri(root)
    before = file_tree(tmp_path)
    rows = check_dataset("things_fmri", root, {})
    assert file_tree(tmp_path) == before  # nothing written, not even a scratch file
    assert [r["subject"] for r in rows] == ["sub-01", "sub-02"]
    for row, t in zip(rows, truth["subjects"].values()):
        kept = int(t["member"].any(1).sum())
        assert row["trials"] == 26 and row["images"] == 23 and row["voxels"] == kept
        assert row["splits"]["test"] == 6 and row["splits"]["train"] + row["splits"]["val"] == 20
        assert row["nan_voxels"] == 0
    # two kept voxels of sub-01 lose a response: they are counted
    table = root / "betas_csv" / "sub-01_ResponseData.h5"
    frame = pd.read_hdf(table)
    frame.loc[0, 3] = np.nan
    frame.loc[1, 7] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        frame.to_hdf(table, key="ResponseData")
    assert check_dataset("things_fmri", root, {"subjects": [1]})[0]["nan_voxels"] == 2
    assert check_dataset("things_fmri", root, {"subjects": [1]}, read_data=False)[0]["nan_voxels"] is None


def test_bold5000_counts_and_problems(tmp_path):
    root = tmp_path / "b5k"
    truth = write_bold5000(root)
    rows = check_dataset("bold5000", root, {})
    assert [r["subject"] for r in rows] == ["CSI1", "CSI2"]
    for row, t in zip(rows, truth["subjects"].values()):
        assert row["trials"] == 60 and row["images"] == len(set(t["names"]))
        assert row["splits"]["test"] == 20  # 5 images x 4 repeats
        assert row["nan_voxels"] == 0
    # one trial of one kept voxel is NaN in session 1 of CSI1
    t = truth["subjects"]["CSI1"]
    betas = t["betas"][0].copy()
    betas[1, 2, 0, 5] = np.nan
    write_glmsingle_nifti(root / "BOLD5000_GLMsingle" / "CSI1_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_ses-01.nii.gz", betas)
    assert check_dataset("bold5000", root, {"subjects": [1]})[0]["nan_voxels"] == 1
    (root / "BOLD5000_GLMsingle" / "CSI1_brainmask.nii.gz").unlink()
    with pytest.raises(DatasetFileNotFoundError, match=r"CSI1_GLMbetas.*no CSI1_brainmask\.nii\.gz"):
        check_dataset("bold5000", root, {"subjects": [1]})


def test_algonauts_counts_and_problems(tmp_path):
    root = tmp_path / "alg"
    write_algonauts2021(root)
    opts = {"train_videos": 20, "n_train": 14, "n_val": 3}
    rows = check_dataset("algonauts2021", root, opts)
    assert [r["subject"] for r in rows] == ["sub01", "sub02"]
    assert all(r["trials"] == 60 and r["images"] == 20 and r["voxels"] == 30 for r in rows)
    assert rows[0]["splits"] == {"train": 42, "val": 9, "test": 9}
    path = root / "participants_data_v2021" / "full_track" / "sub02" / "WB.pkl"
    with open(path, "rb") as fh:
        data = pickle.load(fh)
    data["train"][4, 1, 7] = np.nan
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=2)
    assert [r["nan_voxels"] for r in check_dataset("algonauts2021", root, opts)] == [0, 1]
    # the release's 1000 training videos are expected by default: this small copy is named for what it lacks
    with pytest.raises(DatasetFileNotFoundError, match=r"AlgonautsVideos268_All_30fpsmax: 22 mp4 files.*first 1000"):
        check_dataset("algonauts2021", root, {"n_train": 14, "n_val": 3})


def test_hcp_counts_per_content_group(tmp_path):
    root = tmp_path / "hcp"
    truth = write_hcp_movie(root, versions=("Post_20140821_version", "Pre_20140821_version"))
    table = tmp_path / "versions.csv"
    table.write_text("subject,version\n100610,pre\n102311,pre\n102816,post\n")
    opts = {"runs": [1, 2], "chunk_s": 8, "val_fraction": 0.2, "movie_versions": str(table)}
    before = file_tree(tmp_path)
    rows = check_dataset("hcp_movie", root, opts)
    assert file_tree(tmp_path) == before
    assert {r["subject"] for r in rows} == {"group-Pre_20140821_version", "group-Post_20140821_version"}
    n_trials = sum(n_trs - 4 for _, _, n_trs, _ in HCP_RUNS.values())  # 4-s delay: the first 4 TRs have no frame
    for row in rows:
        assert row["trials"] == n_trials and row["voxels"] == len(truth["bm"]) and row["nan_voxels"] == 0
        assert row["splits"]["test"] > 0 and row["splits"]["val"] > 0
    per_subject = check_dataset("hcp_movie", root, {**opts, "group_average": False}, read_data=False)
    assert sorted(r["subject"] for r in per_subject) == sorted(HCP_SUBJECTS)
    with pytest.raises(DatasetFormatError, match=r"holds 2 versions"):
        check_dataset("hcp_movie", root, {"runs": [1, 2]})


def test_unknown_format_and_missing_root(tmp_path):
    with pytest.raises(UnknownFormatError, match=r"unknown dataset format 'nope'; known formats: \[.*'folder'"):
        check_dataset("nope", tmp_path, {})
    with pytest.raises(UserError, match=r"nowhere: dataset root not found"):
        check_dataset("bold5000", tmp_path / "nowhere", {})


def test_folder_dataset_counts(tmp_path):
    """The folder format (and so the simulator's synthetic datasets) through folder.py's own checks."""
    root = write_folder_dataset(tmp_path / "tiny")
    responses = np.load(root / "subj02" / "responses.npy")
    responses[3, 4] = np.nan
    np.save(root / "subj02" / "responses.npy", responses)
    before = file_tree(tmp_path)
    rows = check_dataset("folder", root, {})
    assert file_tree(tmp_path) == before
    assert [r["subject"] for r in rows] == ["subj01", "subj02"]
    for row in rows:
        assert row["trials"] == 4 * 3 + 20 and row["images"] == 24 and row["voxels"] == 10
        assert row["splits"] == {"train": 18, "val": 2, "test": 12}
    assert [r["nan_voxels"] for r in rows] == [0, 1]
    (root / "subj01" / "coords.npy").unlink()
    with pytest.raises(UserError, match=r"subj01/coords\.npy: missing"):
        check_dataset("folder", root, {})


def test_synthetic_is_checked_as_the_folder_the_simulator_wrote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    entry = {"format": "synthetic", "part": "fmri", "options": {}}
    assert dataset_root(entry) == Path("resources/synthetic/fmri")
    write_folder_dataset(dataset_root(entry))
    rows = check_dataset("synthetic", dataset_root(entry), {})
    assert rows == check_dataset("folder", dataset_root(entry), {}) and len(rows) == 2
