"""Resume that always works (issue 14): kills, moves, removed outputs, repeated resumes and a second trainer.

A "kill" is a real SIGKILL of a training process once it has written its resume state, so the job stops at an
arbitrary point of its next epoch, as when a cluster pre-empts it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from test_training import TRAIN, _spec, data  # noqa: F401  (data: the module's tiny store and feature cache)

from afo.errors import UserError
from afo.training.fit import TrainSpec, fit

LONG = {**TRAIN, "max_epochs": 6, "epoch_fraction": 1.0, "patience": 20, "top_k": 2}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _same_model(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k]) for k in wa)


def _kill_after_states(spec: TrainSpec, out: Path, states: int, cwd: Path | None = None) -> None:
    """Run ``fit(spec, out)`` in a child process and SIGKILL it once it has saved ``states`` resume states."""
    code = "import sys, json; from afo.training.fit import TrainSpec, fit; fit(TrainSpec(**json.loads(sys.argv[1])), sys.argv[2])"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(asdict(spec)), str(out)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = (cwd or Path.cwd()) / out / "work" / spec.digest() / "last.ckpt"
    seen: set[int] = set()
    deadline = time.time() + 180
    while time.time() < deadline and len(seen) < states and proc.poll() is None:
        try:
            seen.add(last.stat().st_ino)  # every save renames a new file over last.ckpt
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen, "the training process never wrote its resume state"
    assert not ((cwd or Path.cwd()) / out / "model.pt").exists(), "killed too late: the job had finished"


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):  # noqa: F811
    """The uninterrupted run every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("whole")
    fit(_spec(data, train=LONG), out)
    return out


def _same_metrics(a, b) -> None:
    """Every logged number but the training seconds (wall time) is the same."""
    a, b = pd.read_csv(a), pd.read_csv(b)
    assert (a["elapsed_s"] > 0).all() and a["elapsed_s"].is_monotonic_increasing
    pd.testing.assert_frame_equal(a.drop(columns="elapsed_s"), b.drop(columns="elapsed_s"))


def test_finished_job_whose_outputs_were_removed_rebuilds_them(data, whole, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "job"
    fit(_spec(data, train=LONG), out)
    (out / "model.pt").unlink()
    (out / "metrics.csv").unlink()
    fit(_spec(data, train=LONG), out)  # the resume state must not name a checkpoint the top-k has deleted
    assert _same_model(out / "model.pt", whole / "model.pt")
    _same_metrics(out / "metrics.csv", whole / "metrics.csv")

    # Again, without a trainer: the soup and the model file are rebuilt from the saved top-k, nothing is retrained.
    (out / "model.pt").unlink()
    (out / "metrics.csv").unlink()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished job was trained again")

    monkeypatch.setattr(pl.Trainer, "fit", no_training)
    report = fit(_spec(data, train=LONG), out)
    assert report["epochs"] == 6
    assert _same_model(out / "model.pt", whole / "model.pt")
    _same_metrics(out / "metrics.csv", whole / "metrics.csv")


def test_early_stopped_job_is_not_trained_again(data, tmp_path, monkeypatch):  # noqa: F811
    spec = _spec(data, train={**LONG, "max_epochs": 30, "patience": 1})
    fit(spec, tmp_path / "job")
    first = _weights(tmp_path / "job" / "model.pt")
    (tmp_path / "job" / "model.pt").unlink()
    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained again")))
    fit(spec, tmp_path / "job")
    again = _weights(tmp_path / "job" / "model.pt")
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.slow  # a multi-process or workflow run: make test, not make test-fast
def test_resume_after_moving_the_project_keeps_the_top_k(data, whole, tmp_path, monkeypatch):  # noqa: F811
    # A project with relative paths, as the workflow runs it; moved (same files, same mtimes) between kill and resume.
    before = tmp_path / "before"
    before.mkdir()
    for name in ("store.h5", "features.h5"):
        shutil.copy2(data / name, before / name)
    monkeypatch.chdir(before)
    spec = TrainSpec(stores={"ds": "store.h5"}, features={"ds": "features.h5"}, model=_spec(data).model, train=LONG)
    _kill_after_states(spec, Path("out"), states=3, cwd=before)
    monkeypatch.chdir(tmp_path)
    after = tmp_path / "after"
    os.rename(before, after)
    monkeypatch.chdir(after)
    fit(spec, "out")
    topk = list((after / "out" / "work" / spec.digest() / "topk").glob("*.ckpt"))
    assert len(topk) == LONG["top_k"], (
        f"checkpoints from before the move were lost track of: {sorted(p.name for p in topk)}"
    )
    assert _same_model(after / "out" / "model.pt", whole / "model.pt")


@pytest.mark.slow  # a multi-process or workflow run: make test, not make test-fast
def test_metrics_history_survives_repeated_resumes(data, whole, tmp_path):  # noqa: F811
    spec = _spec(data, train=LONG)
    _kill_after_states(spec, tmp_path / "job", states=2)
    _kill_after_states(spec, tmp_path / "job", states=2)
    fit(spec, tmp_path / "job")
    resumed, reference = pd.read_csv(tmp_path / "job" / "metrics.csv"), pd.read_csv(whole / "metrics.csv")
    assert resumed["epoch"].tolist() == list(range(6))
    pd.testing.assert_series_equal(resumed["val_r"], reference["val_r"], rtol=1e-5)
    assert _same_model(tmp_path / "job" / "model.pt", whole / "model.pt")


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Another process holding ``path`` (a training job's lock) for ``seconds``; returns once it holds it."""
    code = "import filelock, sys, time; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(float(sys.argv[2]))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_trainer_on_the_same_work_dir_fails_clearly(data, tmp_path):  # noqa: F811
    out = tmp_path / "job"
    (out / "work").mkdir(parents=True)
    holder = _hold_lock(out / "work" / "train.lock", 60)
    try:
        with pytest.raises(UserError, match=r"another training job.*work"):
            fit(_spec(data), out, lock_timeout=0.5)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "model.pt").exists()


@pytest.mark.slow  # a multi-process or workflow run: make test, not make test-fast
def test_a_second_trainer_waits_for_the_first(data, tmp_path, caplog):  # noqa: F811
    out = tmp_path / "job"
    (out / "work").mkdir(parents=True)
    holder = _hold_lock(out / "work" / "train.lock", 2)
    with caplog.at_level("INFO", logger="afo"):
        fit(_spec(data), out)
    holder.wait()
    assert (out / "model.pt").exists()
    assert any("waiting for another training job" in r.getMessage() for r in caplog.records)


def test_finished_job_with_a_removed_checkpoint_names_the_folder(data, tmp_path):  # noqa: F811
    fit(_spec(data), tmp_path / "job")
    (tmp_path / "job" / "model.pt").unlink()
    topk = next((tmp_path / "job" / "work").glob("*/topk"))
    next(topk.glob("*.ckpt")).unlink()
    with pytest.raises(UserError, match=rf"{topk}: checkpoint\(s\) .* were removed.*delete {topk.parent}"):
        fit(_spec(data), tmp_path / "job")
