"""One training job on several devices (issue 10 item 3): DDP with 2 CPU processes over gloo.

The run completes, rank 0 alone writes the outputs (one model.pt, one metrics.csv with one row per epoch, one CSV
log, top-k checkpoints), the validation r is within 0.02 of the one-process run, the two ranks together see
exactly the one-device batches, and a job trained on 2 devices resumes on 1 (the device count is not part of the
job's settings).
"""

import numpy as np
import pandas as pd
import pytest
import torch

from afo.training.datamodule import MixedBatches
from afo.training.ddp import DevicesError
from afo.training.fit import JobPaths, fit, job_data
from afo.training.modelfile import load_model
from test_training import TRAIN, _spec, data  # noqa: F401  (data: the module's tiny store and feature cache)

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
            assert sorted(map(tuple, rows.nan_to_num(-9).tolist())) == sorted(map(tuple, target.nan_to_num(-9).tolist()))
        features = torch.cat([p.features[0] for p in parts])
        assert sorted(map(tuple, features.flatten(1).tolist())) == sorted(map(tuple, whole.features[0].flatten(1).tolist()))


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):  # noqa: F811
    """The same job on one process and on two (DDP over gloo)."""
    out = tmp_path_factory.mktemp("ddp")
    one = fit(_spec(data, train=DDP_TRAIN), out / "one")
    two = fit(_spec(data, train=DDP_TRAIN), out / "two", devices=2)
    return out, one, two


def test_two_processes_complete_write_once_and_match_one(data, runs):  # noqa: F811
    out, one, two = runs
    for name in ("one", "two"):
        assert (out / name / "model.pt").exists()
    metrics = {name: pd.read_csv(out / name / "metrics.csv") for name in ("one", "two")}
    # One row per epoch (not one per rank), and the same number of epochs and steps as on one device.
    assert metrics["two"]["epoch"].tolist() == metrics["one"]["epoch"].tolist() == [0, 1, 2]
    assert two["epochs"] == one["epochs"]
    # Validation r per epoch and of the final soup: within 0.02 of the one-process run.
    assert np.abs(metrics["two"]["val_r"].to_numpy() - metrics["one"]["val_r"].to_numpy()).max() < 0.02
    assert abs(two["val_r"] - one["val_r"]) < 0.02
    work = JobPaths.of(_spec(data, train=DDP_TRAIN), out / "two").work
    assert len(list((work / "logs").glob("version_*"))) == 1  # rank 0's CSV log only
    assert sorted(p.name for p in (work / "topk").iterdir()) == sorted(two_topk(work))
    assert not list(out.rglob("*.tmp*")), "a rank left a temporary file"
    model, model_file = load_model(out / "two" / "model.pt")
    assert model_file.voxels["ds/subj01"].tolist() == list(range(10))


def two_topk(work):
    import json

    return json.loads((work / "finished.json").read_text())["topk"]


def test_two_device_job_resumes_on_one_device(data, runs, tmp_path):  # noqa: F811
    """The device count is no part of the job's settings: the state of a 2-device job is the 1-device job's."""
    out, _, two = runs
    spec = _spec(data, train=DDP_TRAIN)
    assert JobPaths.of(spec, out / "two").work.name == JobPaths.of(spec, out / "one").work.name
    (out / "two" / "model.pt").unlink()
    again = fit(spec, out / "two", devices=1)  # finished: rebuilds the soup from rank 0's top-k
    assert again["val_r"] == pytest.approx(two["val_r"]) and again["epochs"] == two["epochs"]


def test_device_count_must_divide_the_batch(data, tmp_path):  # noqa: F811
    with pytest.raises(DevicesError, match="train_devices = 3 does not divide train.batch_size = 8"):
        fit(_spec(data, train=DDP_TRAIN), tmp_path / "m", devices=3)
