"""The `afo` command line for people: check-data on a config, and one-line errors with exit status 2."""

from __future__ import annotations

import json

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
