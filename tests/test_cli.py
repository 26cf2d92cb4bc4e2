"""The `afo` command line for people: check-data on a config, and one-line errors with exit status 2."""

from __future__ import annotations

import json

import pytest
import yaml

from afo.cli import main


def _config(tmp_path, root):
    config = yaml.safe_load(open("config.yaml"))
    config["datasets"] = {"mine": {"format": "folder", "root": str(root), "role": "train"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_check_data_reports_each_subject(folder_dataset, tmp_path, capsys):
    before = sorted((p, p.stat().st_mtime_ns) for p in folder_dataset.rglob("*"))
    assert main(["check-data", str(_config(tmp_path, folder_dataset))]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["subject"]: r for r in report["mine"]}
    assert set(rows) == {"subj01", "subj02"} and rows["subj01"]["voxels"] == 10
    assert sum(rows["subj01"]["splits"].values()) == rows["subj01"]["trials"]
    assert sorted((p, p.stat().st_mtime_ns) for p in folder_dataset.rglob("*")) == before  # nothing written


def test_check_data_names_the_first_problem(folder_dataset, tmp_path, capsys):
    (folder_dataset / "subj02" / "coords.npy").unlink()
    assert main(["check-data", str(_config(tmp_path, folder_dataset))]) == 2
    err = capsys.readouterr().err
    assert "coords.npy" in err and "Traceback" not in err


def test_argument_conflicts_are_one_line(tmp_path, capsys):
    code = main(
        [
            "train",
            "--store",
            "a=a.h5",
            "--features",
            "a=f.h5",
            "--model-config",
            "{}",
            "--train-config",
            "{}",
            "--out",
            str(tmp_path),
            "--roi",
            "1",
        ]
    )
    assert code == 2 and "--rois" in capsys.readouterr().err


def test_check_data_checks_every_root_and_reports_every_failing_dataset(tmp_path, capsys):
    """The paper's config with no data: every dataset fails (NSD, THINGS-EEG2 and THINGS-MEG included), not only
    the first, and the exit status says so; every format has a checker."""
    config = yaml.safe_load(open("config/paper.yaml"))
    for ds in config["datasets"].values():
        ds["root"] = str(tmp_path / "absent" / ds["format"])
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["check-data", str(path), "--no-data"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert set(report) == set(config["datasets"])
    assert all(v.startswith("error: ") and "dataset root not found" in v for v in report.values()), report
    for fmt in ("nsd", "things_eeg2", "things_meg"):
        assert f"absent/{fmt}: dataset root not found" in captured.err
    assert f"{len(report)} of {len(report)} dataset(s) failed" in captured.err and "Traceback" not in captured.err
    # An NSD root that exists but holds nothing: NSD's own check names what is missing; no format is "not checked".
    (tmp_path / "absent" / "nsd").mkdir(parents=True)
    main(["check-data", str(path), "--no-data"])
    report = json.loads(capsys.readouterr().out)
    nsd = [k for k, ds in config["datasets"].items() if ds["format"] == "nsd"]
    assert nsd and all(report[k].startswith("error: ") and "dataset root not found" not in report[k] for k in nsd)
    assert not [k for k, v in report.items() if "not checked" in v]


def test_check_data_on_a_synthetic_dataset_that_is_not_simulated(tmp_path, monkeypatch, capsys):
    config = yaml.safe_load(open("config.yaml"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # no resources/synthetic here
    assert main(["check-data", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not simulated yet" in err and "snakemake resources/synthetic" in err and "set the dataset's root" not in err


@pytest.mark.parametrize("command", ["check-config", "check-data"])
def test_check_commands_on_a_missing_config_file(tmp_path, capsys, command):
    assert main([command, str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml: no config file here" in err and len(err.strip().splitlines()) == 1
