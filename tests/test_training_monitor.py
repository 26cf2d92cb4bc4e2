"""Training you can watch (issue 13): a log line per epoch in the job's log, TensorBoard events when installed."""

import json
import re
import subprocess
import sys
from dataclasses import asdict

import pytest
from test_training import TRAIN, _spec, data  # noqa: F401  (data: the module's tiny store and feature cache)

from afo.training.monitor import tensorboard_available


@pytest.mark.slow  # a multi-process or workflow run: make test, not make test-fast
def test_job_log_has_one_line_per_epoch(data, tmp_path):  # noqa: F811
    # As the workflow runs a job: a process that configures no logging, its stderr is the job's log.
    spec = _spec(data, train={**TRAIN, "max_epochs": 3})
    code = "import sys, json; from afo.training.fit import TrainSpec, fit; fit(TrainSpec(**json.loads(sys.argv[1])), sys.argv[2])"
    job = subprocess.run(
        [sys.executable, "-c", code, json.dumps(asdict(spec)), str(tmp_path / "m")], capture_output=True, text=True
    )
    assert job.returncode == 0, job.stderr[-3000:]
    pattern = re.compile(
        r"epoch (\d+)/3  steps (\d+)  train loss \S+  val_r (-?[\d.]+)  best (-?[\d.]+)  [\d.]+ s/epoch  ETA \d+:\d\d"
    )
    lines = [m for m in map(pattern.search, job.stderr.splitlines()) if m]
    assert [int(m[1]) for m in lines] == [1, 2, 3], job.stderr[-3000:]
    steps = [int(m[2]) for m in lines]
    assert steps[0] > 0 and steps == [steps[0] * k for k in (1, 2, 3)]
    val_r = [float(m[3]) for m in lines]
    assert [float(m[4]) for m in lines] == pytest.approx([max(val_r[: k + 1]) for k in range(3)], abs=1e-4)


@pytest.mark.skipif(not tensorboard_available(), reason="neither tensorboard nor tensorboardX is installed")
def test_tensorboard_events_beside_metrics(data, tmp_path):  # noqa: F811
    from afo.training.fit import fit

    fit(_spec(data, train={**TRAIN, "max_epochs": 2}), tmp_path / "m")
    assert (tmp_path / "m" / "metrics.csv").exists()
    assert list((tmp_path / "m" / "tensorboard").rglob("events.out.tfevents.*"))
