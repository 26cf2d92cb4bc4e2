"""A training job's resumable state, kept in ``<out>/work/<spec digest>/`` (outside the files Snakemake declares).

    work/train.lock          one trainer per output folder at a time (released by the OS when its process dies)
    work/train.owner         who holds the lock (pid, host, since), for the message a second trainer prints
    work/<digest>/last.ckpt  full Lightning state after every epoch, written after the top-k update
    work/<digest>/topk/      the best checkpoints (weights only) named epochNNNN.ckpt
    work/<digest>/logs/version_N/metrics.csv   one CSV log per attempt; metrics.csv merges them
    work/<digest>/finished.json   written when training ends: epochs and the top-k (file name -> val r)

Every path in the state is a file name inside the job's folder, so moving the project between a kill and the
resume loses nothing. A job with ``finished.json`` is never trained again: its soup and model file are rebuilt
from the top-k.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import filelock
import pandas as pd

from afo.errors import UserError
from afo.io import atomic_path, atomic_write_text
from afo.training.lightning import pl

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"
OWNER_NAME = "train.owner"
FINISHED_NAME = "finished.json"


class TrainingLocked(UserError):
    """Another training job is using the same output folder."""


@contextmanager
def training_lock(work_root: str | Path, timeout: float | None = None) -> Iterator[None]:
    """Hold ``<work_root>/train.lock`` while training; wait for another holder, at most ``timeout`` seconds
    (None: as long as it takes — e.g. a job orphaned by a killed Snakemake finishing before its rerun)."""
    work_root = Path(work_root)
    work_root.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(work_root / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        holder = _owner(work_root)
        log.info("waiting for another training job (%s) to finish with %s", holder, work_root)
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except filelock.Timeout:
            raise TrainingLocked(
                f"another training job ({holder}) is using {work_root}; wait for it to finish or stop it, then rerun"
            ) from None
    try:
        atomic_write_text(
            work_root / OWNER_NAME,
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}",
        )
        yield
    finally:
        (work_root / OWNER_NAME).unlink(missing_ok=True)
        lock.release()


def _owner(work_root: Path) -> str:
    try:
        return (work_root / OWNER_NAME).read_text()
    except FileNotFoundError:
        return "owner unknown"


class TopK(pl.callbacks.ModelCheckpoint):
    """Lightning's top-k checkpointing whose resume state names checkpoints by file name, checked against the files.

    On resume, checkpoints the state names but that are gone are dropped, and checkpoints present but not named
    (written in the epoch a kill interrupted, which is trained again) are deleted, so the top-k is exactly the files.
    """

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["dirpath"] = None
        state["best_k_models"] = {Path(p).name: v for p, v in self.best_k_models.items()}
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = Path(state[key]).name if state.get(key) else ""
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        folder = Path(self.dirpath)
        named = {str(folder / name): score for name, score in state_dict.get("best_k_models", {}).items()}
        self.best_k_models = {p: s for p, s in named.items() if Path(p).exists()}
        for stray in folder.glob("*.ckpt"):
            if str(stray) not in self.best_k_models:
                stray.unlink(missing_ok=True)  # under DDP every rank loads this state: another may be first
        self.current_score = state_dict.get("current_score")
        if self.best_k_models:
            better, worse = (max, min) if self.mode == "max" else (min, max)
            self.best_model_path = better(self.best_k_models, key=self.best_k_models.get)
            self.best_model_score = self.best_k_models[self.best_model_path]
            if len(self.best_k_models) == self.save_top_k:
                self.kth_best_model_path = worse(self.best_k_models, key=self.best_k_models.get)
                self.kth_value = self.best_k_models[self.kth_best_model_path]

    def scores(self) -> dict[str, float]:
        """Checkpoint file name -> validation score, in the order they were saved."""
        return {Path(p).name: float(s) for p, s in self.best_k_models.items()}


class ResumeCheckpoint(pl.callbacks.Checkpoint):
    """Writes the full training state (weights, optimizer, loops, callbacks) at the end of every epoch, atomically,
    so a job killed at any moment resumes from its last finished epoch.

    A :class:`~pytorch_lightning.callbacks.Checkpoint` listed after :class:`TopK`: Lightning runs checkpoint
    callbacks last and in order, so the state includes this epoch's early-stopping and top-k updates. The loggers
    are flushed first, so the logs on disk cover every epoch the state does.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.save()
        if not trainer.is_global_zero:
            # Under DDP every rank calls save_checkpoint (it ends in a barrier) but only rank 0 writes the file.
            trainer.save_checkpoint(self.path, weights_only=False)
            return
        with atomic_path(self.path, suffix=".ckpt") as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)


@dataclass
class Finished:
    """What a finished training leaves for the soup and the report: the epochs trained, the top-k (file name -> val
    r), why training stopped (``patience``: early stopping; ``max_epochs``: the cap, so not converged), the epoch
    (1-based) of the best validation r, and the optimiser steps taken."""

    epochs: int
    topk: dict[str, float]
    stop_reason: str = "unknown"  # finished.json of older versions did not record it
    best_epoch: int = 0
    steps: int = 0

    def write(self, job: str | Path) -> None:
        atomic_write_text(Path(job) / FINISHED_NAME, json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, job: str | Path) -> Finished | None:
        path = Path(job) / FINISHED_NAME
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def checkpoints(self, folder: str | Path) -> dict[Path, float]:
        """The top-k checkpoint files (path -> val r); an error naming the folder when they are gone."""
        present = {Path(folder) / name: s for name, s in self.topk.items() if (Path(folder) / name).exists()}
        missing = sorted(set(self.topk) - {p.name for p in present})
        if missing:
            raise UserError(
                f"{folder}: checkpoint(s) {missing} of this finished job were removed, so its soup cannot be rebuilt; "
                f"delete {Path(folder).parent} to train the job again"
            )
        return present


def merged_metrics(logs: str | Path) -> pd.DataFrame:
    """Per-epoch validation r, mean logged train loss, learning rate, optimiser steps and training seconds at the
    epoch's end over every attempt's CSV log, one row per epoch.

    Attempts are Lightning's ``version_N`` folders; an epoch logged by several attempts (trained again after a
    kill) is taken from the latest.
    """
    frames = []
    versions = sorted(Path(logs).glob("version_*"), key=lambda p: int(p.name.removeprefix("version_")))
    for version in versions:
        path = version / "metrics.csv"
        if not path.exists() or path.stat().st_size == 0:
            continue
        log_df = pd.read_csv(path)
        if "epoch" not in log_df or log_df.empty:
            continue
        by_epoch = log_df.groupby("epoch")
        means = by_epoch[[c for c in ("val_r", "train_loss", "lr") if c in log_df]].mean()
        # The optimiser steps and the job's training seconds when the epoch ended (time to accuracy).
        ends = by_epoch[[c for c in ("step", "elapsed_s") if c in log_df]].max()
        if "step" in ends:  # Lightning logs the index of the epoch's last step: steps taken = index + 1
            ends = ends.assign(step=ends["step"] + 1).rename(columns={"step": "steps"})
        frames.append(means.join(ends).reset_index())
    if not frames:
        return pd.DataFrame(columns=["epoch", "val_r", "train_loss", "lr", "steps", "elapsed_s"])
    merged = pd.concat(frames, ignore_index=True).drop_duplicates("epoch", keep="last")
    return merged.sort_values("epoch").reset_index(drop=True)


def write_metrics(logs: str | Path, dest: str | Path) -> None:
    """metrics.csv of a job (see :func:`merged_metrics`), written atomically."""
    with atomic_path(dest, suffix=".csv") as tmp:
        merged_metrics(logs).to_csv(tmp, index=False)
