"""Training you can watch: one log line per epoch, and TensorBoard event files when tensorboard is installed.

The per-epoch line goes through :mod:`logging` (logger ``afo.training.monitor``, level INFO) into the job's log;
Lightning's progress bar (on a terminal) and the final report are unchanged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from afo.runtime import log_to_stderr_unless_configured  # noqa: F401  (here before: fit and finetune import it)
from afo.training.lightning import pl, tensorboard_installed

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class EpochLog(pl.Callback):
    """Logs, after every epoch: epoch, steps, mean train loss, val r, best val r so far, time per epoch, ETA; and
    the job's training seconds so far as the metric ``elapsed_s`` (metrics.csv).

    The best score and the seconds are part of the resume state, so they stay right across resumes.
    """

    def __init__(self, monitor: str = "val_r"):
        self.monitor = monitor
        self.best: float | None = None
        self._start = 0.0
        self._loss_sum: torch.Tensor | None = None
        self._steps = 0
        self._durations: list[float] = []
        self.elapsed = 0.0  # training seconds over every attempt (resume state)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()
        self._loss_sum, self._steps = None, 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        # Summed on the device: reading a GPU value every step would synchronise it.
        loss = loss.detach().float()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._steps += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return  # one line per epoch in the job's log, not one per DDP rank
        seconds = time.monotonic() - self._start
        self._durations.append(seconds)
        self.elapsed += seconds
        pl_module.log("elapsed_s", self.elapsed, batch_size=1, rank_zero_only=True)
        score = trainer.callback_metrics.get(self.monitor)
        score = float(score) if score is not None else float("nan")
        if score == score and (self.best is None or score > self.best):
            self.best = score
        loss = float(self._loss_sum) / self._steps if self._loss_sum is not None else float("nan")
        per_epoch = sum(self._durations) / len(self._durations)
        remaining = max(0, int(trainer.max_epochs or 0) - trainer.current_epoch - 1)
        log.info(
            "epoch %d/%s  steps %d  train loss %.4g  %s %.4f  best %.4f  %.1f s/epoch  ETA %s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            trainer.global_step,
            loss,
            self.monitor,
            score,
            self.best if self.best is not None else float("nan"),
            seconds,
            _duration(per_epoch * remaining),
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "elapsed": self.elapsed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        self.elapsed = float(state_dict.get("elapsed", 0.0))


def tensorboard_available() -> bool:
    return tensorboard_installed()


def job_loggers(work: str | Path, tensorboard_dir: str | Path) -> list[pl.loggers.Logger]:
    """A CSV log per attempt under ``<work>/logs`` (merged into metrics.csv), and TensorBoard events in
    ``tensorboard_dir`` (one folder across resumes) when tensorboard or tensorboardX is installed."""
    loggers: list[pl.loggers.Logger] = [pl.loggers.CSVLogger(work, name="logs")]
    if tensorboard_available():
        tb_dir = Path(tensorboard_dir)
        loggers.append(
            pl.loggers.TensorBoardLogger(tb_dir.parent, name=tb_dir.name, version="", default_hp_metric=False)
        )
    else:
        log.info(
            "tensorboard is not installed: no TensorBoard events for this job (metrics.csv has the per-epoch numbers)"
        )
    return loggers
