"""Training to convergence: the learning-rate schedules, the optimiser choice, and the stop reason every job records."""

import logging
import math

import pandas as pd
import pytest
import torch
from test_training import TRAIN, _spec, data  # noqa: F401  (data: the module's tiny store and feature cache)

from afo.errors import UserError
from afo.training.schedule import LearningRate, learning_rate, make_optimizer


def test_warmup_then_constant():
    lr = LearningRate(peak=0.01, warmup_steps=4)
    assert [round(lr.lr(s), 6) for s in range(6)] == [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01]


def test_cosine_decays_to_its_floor_at_the_horizon_and_stays_there():
    lr = LearningRate(peak=1.0, schedule="cosine", warmup_steps=10, decay_steps=110, min_lr_ratio=0.1)
    assert lr.factor(9) == pytest.approx(1.0)
    assert lr.factor(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert lr.factor(110) == pytest.approx(0.1) and lr.factor(500) == pytest.approx(0.1)
    assert all(lr.factor(s) >= lr.factor(s + 1) for s in range(10, 200))


def test_onecycle_starts_low_peaks_and_ends_near_zero():
    lr = LearningRate(peak=1.0, schedule="onecycle", warmup_steps=20, decay_steps=100)
    assert lr.factor(0) == pytest.approx(1 / 25)
    assert lr.factor(20) == pytest.approx(1.0)
    assert lr.factor(100) == pytest.approx(1e-4)


def test_plateau_reduces_after_its_patience_and_resumes_its_state():
    lr = LearningRate(peak=1.0, schedule="plateau", plateau_patience=2, plateau_factor=0.5, min_lr_ratio=0.2)
    for score in (0.1, 0.2, 0.2, 0.19):  # best 0.2, then two passes without improvement
        lr.observe(score)
    assert lr.factor(0) == pytest.approx(0.5)
    lr.observe(0.3)  # an improvement resets the count, not the rate
    assert lr.factor(0) == pytest.approx(0.5)
    for score in (0.3, 0.3, 0.3, 0.3, 0.3, 0.3):
        lr.observe(score)
    assert lr.factor(0) == pytest.approx(0.2)  # 0.5 -> 0.25 -> floor 0.2
    again = LearningRate(peak=1.0, schedule="plateau", plateau_patience=2, plateau_factor=0.5)
    again.load_state_dict(lr.state_dict())
    assert again.factor(0) == lr.factor(0) and again.best == 0.3
    lr.observe(math.nan)  # a missing score changes nothing
    assert lr.stale == 0
    creeping = LearningRate(peak=1.0, schedule="plateau", plateau_patience=2, plateau_factor=0.5, min_delta=0.01)
    for score in (0.5, 0.505, 0.509):  # rises, but by less than min_delta: a plateau
        creeping.observe(score)
    assert creeping.factor(0) == pytest.approx(0.5)


def test_settings_are_checked():
    with pytest.raises(UserError, match="train.lr_schedule 'step'"):
        LearningRate(peak=1.0, schedule="step")
    with pytest.raises(UserError, match="train.optimizer 'sgd'"):
        make_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], 0.1, (0.9, 0.999), 0.0)
    assert isinstance(
        make_optimizer("adamw", [torch.nn.Parameter(torch.zeros(1))], 0.1, (0.9, 0.999), 0.0), torch.optim.AdamW
    )
    # decay_epochs null: the horizon is max_epochs
    assert learning_rate({"lr": 0.1, "max_epochs": 7, "lr_schedule": "cosine"}, 3).decay_steps == 21


def test_a_job_at_its_cap_says_so_and_warns(data, tmp_path, caplog):  # noqa: F811
    from afo.training.fit import fit

    with caplog.at_level(logging.WARNING, logger="afo"):
        report = fit(_spec(data, train={**TRAIN, "max_epochs": 3}), tmp_path / "m")
    assert report["stop_reason"] == "max_epochs" and report["epochs"] == 3
    assert 1 <= report["best_epoch"] <= 3
    metrics = pd.read_csv(tmp_path / "m" / "metrics.csv")
    assert report["steps"] == metrics["steps"].iloc[-1] and metrics["steps"].is_monotonic_increasing
    assert (metrics["elapsed_s"].diff().dropna() > 0).all()
    assert any("train.max_epochs" in r.getMessage() and "not converged" in r.getMessage() for r in caplog.records)


def test_a_job_stopped_by_patience_records_its_best_epoch(data, tmp_path):  # noqa: F811
    from afo.evaluation.training import stopped_at_cap, training_table
    from afo.training.fit import fit

    report = fit(_spec(data, train={**TRAIN, "max_epochs": 60, "patience": 2}), tmp_path / "m")
    assert report["stop_reason"] == "patience" and report["epochs"] < 60
    metrics = pd.read_csv(tmp_path / "m" / "metrics.csv")
    assert report["best_epoch"] == int(metrics["val_r"].idxmax()) + 1 == report["epochs"] - 2
    table = training_table([tmp_path / "m" / "model.pt"], root=tmp_path)
    assert table.loc[0, "model"] == "m" and table.loc[0, "stop_reason"] == "patience"
    assert stopped_at_cap(table).empty


def test_the_schedule_drives_the_optimiser(data, tmp_path):  # noqa: F811
    from afo.training.fit import fit

    train = {**TRAIN, "max_epochs": 3, "lr_schedule": "cosine", "decay_epochs": 2, "optimizer": "adamw"}
    fit(_spec(data, train=train), tmp_path / "m")
    lrs = pd.read_csv(tmp_path / "m" / "metrics.csv")["lr"].tolist()
    assert lrs[0] < TRAIN["lr"] and lrs[1] == pytest.approx(0.0) and lrs[2] == pytest.approx(0.0)
