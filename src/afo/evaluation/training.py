"""How every training job of a run ended: the table ``results/models/training.csv`` and its front-page rows.

A model counts as converged only when early stopping ended its training (``stop_reason`` ``patience``); a job that
ran into ``train.max_epochs`` stopped while its validation r was still improving, so its numbers describe an
unfinished model. The front page lists every such job.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from afo.training.modelfile import ModelFileError

COLUMNS = ["model", "stop_reason", "epochs", "best_epoch", "steps", "val_r", "seconds"]


def model_info(path: str | Path) -> dict:
    """The ``info`` record of a model file, read without loading its weights into memory (memory-mapped)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError) as exc:
        raise ModelFileError(f"{path}: cannot read this model file ({exc}); delete it and rerun the workflow") from exc
    info = payload.get("info") if isinstance(payload, dict) else None
    if not isinstance(info, dict):
        raise ModelFileError(f"{path}: not an afo model file (no info record); delete it and rerun the workflow")
    return info


def training_table(models: list[str | Path], root: str | Path = "results/models") -> pd.DataFrame:
    """One row per model file: its folder under ``root``, why training stopped (``patience``, ``max_epochs``, or
    ``unknown`` for files written before it was recorded), epochs, best epoch (1-based), optimiser steps, the soup's
    validation r and the job's seconds."""
    rows = []
    for path in models:
        info = model_info(path)
        folder = Path(path).parent
        name = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else folder.as_posix()
        rows.append(
            [
                name,
                info.get("stop_reason", "unknown"),
                info.get("epochs"),
                info.get("best_epoch"),
                info.get("steps"),
                info.get("val_r"),
                info.get("seconds"),
            ]
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def stopped_at_cap(table: pd.DataFrame) -> pd.DataFrame:
    """The jobs that ended at ``train.max_epochs`` (not converged)."""
    return table[table["stop_reason"] == "max_epochs"]
