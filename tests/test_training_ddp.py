"""One training job on several devices: DDP with 2 CPU processes over gloo.

The run completes, rank 0 alone writes the outputs (one model.pt, one metrics.csv with one row per epoch, one CSV
log, top-k checkpoints), the validation r is within 1e-5 of the one-process run, the two ranks together see
exactly the one-device batches, and a job trained on 2 devices resumes on 1 (the device count is not part of the
job's settings).
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_training import TRAIN, _spec, data  # noqa: F401  (data: the module's tiny store and feature cache)

from afo.training.datamodule import MixedBatches
from afo.training.ddp import DevicesError
from afo.training.fit import JobPaths, fit, job_data
from afo.training.modelfile import load_model

DDP_TRAIN = {**TRAIN, "max_epochs": 3, "epoch_fraction": 1.0, "top_k": 2}


def test_two_ranks_together_see_exactly_the_one_device_batch(data):  # noqa: F811
    subjects = job_data(_spec(data)).subjects
    bank = job_data(_spec(data)).bank
    one = MixedBatches(subjects, bank, batch_size=8, max_voxels=6, seed=3)
    halves = [MixedBatches(subjects, bank, batch_size=8, max_voxels=6, seed=3, shard=(r, 2)) for r in range(2)]
    for index in [(0, 0), (1, 2), (4, 1)]:
        whole, parts = one[index], [h[index] for h in halves]
        assert [p.features[0].shape[0] for p in parts] == [4, 4]
        for key, target in whole.targets.items():
            # Same voxels on both ranks, and the rows of the two shards are the whole batch's rows.
            assert all(torch.equal(p.voxel_index[key], whole.voxel_index[key]) for p in parts if key in p.targets)
            rows = torch.cat([p.targets[key] for p in parts if key in p.targets])
            assert sorted(map(tuple, rows.nan_to_num(-9).tolist())) == sorted(
                map(tuple, target.nan_to_num(-9).tolist())
            )
        features = torch.cat([p.features[0] for p in parts])
        assert sorted(map(tuple, features.flatten(1).tolist())) == sorted(
            map(tuple, whole.features[0].flatten(1).tolist())
        )


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):  # noqa: F811
    """The same job on one process and on two (DDP over gloo)."""
    out = tmp_path_factory.mktemp("ddp")
    one = fit(_spec(data, train=DDP_TRAIN), out / "one")
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    two = fit(_spec(data, train=DDP_TRAIN), out / "two", devices=2)
    # A later job in this process runs as before the DDP job (Lightning sets threads for its ranks).
    assert (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")) == (threads, omp)
    return out, one, two


@pytest.mark.slow  # a multi-process or workflow run: make test, not make test-fast
def test_two_processes_complete_write_once_and_match_one(data, runs):  # noqa: F811
    out, one, two = runs
    for name in ("one", "two"):
        assert (out / name / "model.pt").exists()
    metrics = {name: pd.read_csv(out / name / "metrics.csv") for name in ("one", "two")}
    # One row per epoch (not one per rank), and the same number of epochs and steps as on one device.
    assert metrics["two"]["epoch"].tolist() == metrics["one"]["epoch"].tolist() == [0, 1, 2]
    assert two["epochs"] == one["epochs"]
    # Validation r per epoch and of the final soup: the one-process run's up to float rounding (measured: 1.5e-8
    # per epoch, 5e-8 for the soup).
    assert np.abs(metrics["two"]["val_r"].to_numpy() - metrics["one"]["val_r"].to_numpy()).max() < 1e-5
    assert abs(two["val_r"] - one["val_r"]) < 1e-5
    work = JobPaths.of(_spec(data, train=DDP_TRAIN), out / "two").work
    assert len(list((work / "logs").glob("version_*"))) == 1  # rank 0's CSV log only
    assert sorted(p.name for p in (work / "topk").iterdir()) == sorted(two_topk(work))
    assert not list(out.rglob("*.tmp*")), "a rank left a temporary file"
    model, model_file = load_model(out / "two" / "model.pt")
    assert model_file.voxels["ds/subj01"].tolist() == list(range(10))


def two_topk(work):
    return json.loads((work / "finished.json").read_text())["topk"]


@pytest.mark.slow  # a multi-process or workflow run: make test, not make test-fast
def test_two_device_job_resumes_on_one_device(data, runs, tmp_path):  # noqa: F811
    """The device count is no part of the job's settings: the state of a 2-device job is the 1-device job's."""
    out, _, two = runs
    spec = _spec(data, train=DDP_TRAIN)
    assert JobPaths.of(spec, out / "two").work.name == JobPaths.of(spec, out / "one").work.name
    (out / "two" / "model.pt").unlink()
    again = fit(spec, out / "two", devices=1)  # finished: rebuilds the soup from rank 0's top-k
    assert again["val_r"] == pytest.approx(two["val_r"]) and again["epochs"] == two["epochs"]


@pytest.mark.slow  # a third 2-process training run
def test_killed_two_device_job_resumes_and_leaves_no_rank_behind(data, runs, tmp_path):  # noqa: F811
    """SIGKILL of the job (rank 0) mid-training: rank 1 dies with it; the next run resumes from the last epoch."""
    out, _, _ = runs
    spec = _spec(data, train=DDP_TRAIN)
    code = (
        "import sys, json; from afo.training.fit import TrainSpec, fit; "
        "fit(TrainSpec(**json.loads(sys.argv[1])), sys.argv[2], devices=2)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(asdict(spec)), str(tmp_path / "m")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = JobPaths.of(spec, tmp_path / "m").last
    deadline = time.time() + 300
    while time.time() < deadline and not last.exists() and proc.poll() is None:
        time.sleep(0.01)
    ranks = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (tmp_path / "m" / "model.pt").exists(), (
        "killed before the first state or after the end"
    )
    assert ranks, "rank 1 was not running"
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in ranks):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks), "rank 1 outlived its job"
    fit(spec, tmp_path / "m", devices=2)
    a = torch.load(tmp_path / "m" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "two" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    metrics = pd.read_csv(tmp_path / "m" / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1, 2]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_device_count_must_divide_the_batch(data, tmp_path):  # noqa: F811
    with pytest.raises(DevicesError, match="train_devices = 3 does not divide train.batch_size = 8"):
        fit(_spec(data, train=DDP_TRAIN), tmp_path / "m", devices=3)
