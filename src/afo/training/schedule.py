"""The learning rate of a training job, step by step: warm-up, then constant, cosine or one-cycle decay, or
reductions on a validation plateau — and the optimiser it drives (AdaBelief, as the paper, or AdamW).

Early stopping ends every job (``train.patience``); the schedule only decides how fast it gets there. A decaying
schedule needs a horizon (``decay_epochs``; null = ``max_epochs``): past it the rate stays at its floor and early
stopping ends the job. ``plateau`` needs none: the rate is multiplied by ``plateau_factor`` whenever the
validation score has not improved for ``plateau_patience`` validation passes, which suits a job whose length
early stopping decides. The plateau state is part of the resume state (:meth:`LearningRate.state_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from afo.errors import UserError

OPTIMIZERS = ("adabelief", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle", "plateau")
# torch.optim.lr_scheduler.OneCycleLR's defaults: start at peak / 25, end at peak / 1e4.
_ONECYCLE_START = 1 / 25
_ONECYCLE_END = 1e-4


@dataclass
class LearningRate:
    """The learning rate at every optimiser step.

    peak: the rate after warm-up (``train.lr``).
    schedule: constant | cosine | onecycle | plateau (see the module docstring).
    warmup_steps: linear ramp from 0 (onecycle: from peak / 25) to ``peak`` over this many steps.
    decay_steps: horizon of cosine / onecycle in steps (warm-up included); past it the rate stays at the floor.
    min_lr_ratio: floor of the cosine decay and of the plateau reductions, as a fraction of ``peak``.
    plateau_patience / plateau_factor: validation passes without improvement before each reduction, and its factor.
    min_delta: an improvement is a validation score above the best by more than this (as early stopping counts).
    """

    peak: float
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int | None = None
    min_lr_ratio: float = 0.0
    plateau_patience: int = 4
    plateau_factor: float = 0.3
    min_delta: float = 0.0
    # Plateau state (saved with the job's resume state).
    scale: float = 1.0
    best: float | None = None
    stale: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UserError(f"train.lr_schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.schedule in ("cosine", "onecycle") and not self.decay_steps:
            raise UserError(f"train.lr_schedule {self.schedule} needs a horizon (decay_steps > 0)")

    def factor(self, step: int) -> float:
        """Multiplier of ``peak`` at optimiser step ``step`` (0-based)."""
        warm = self.warmup_steps
        if self.schedule == "onecycle":
            if step < warm:
                return _ONECYCLE_START + (1 - _ONECYCLE_START) * step / warm
            return _ONECYCLE_END + (1 - _ONECYCLE_END) * self._cosine(step)
        ramp = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        if self.schedule == "cosine":
            floor = self.min_lr_ratio
            return ramp * (floor + (1 - floor) * self._cosine(step))
        if self.schedule == "plateau":
            return ramp * self.scale
        return ramp

    def _cosine(self, step: int) -> float:
        """1 at the end of warm-up, 0 at the horizon and after it."""
        span = max(1, int(self.decay_steps or 1) - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return 0.5 * (1 + math.cos(math.pi * progress))

    def lr(self, step: int) -> float:
        return self.peak * self.factor(step)

    def observe(self, score: float) -> None:
        """A validation score (higher is better): with ``plateau``, reduce the rate after a plateau."""
        if self.schedule != "plateau" or not math.isfinite(score):
            return
        if self.best is None or score > self.best + self.min_delta:
            self.best, self.stale = score, 0
            return
        self.stale += 1
        if self.stale >= self.plateau_patience:
            self.scale = max(self.min_lr_ratio, self.scale * self.plateau_factor)
            self.stale = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.stale = float(state["scale"]), state["best"], int(state["stale"])


def learning_rate(train: dict, steps_per_epoch: int) -> LearningRate:
    """The :class:`LearningRate` of a ``train`` section (keys missing from older specs take their defaults)."""
    horizon = train.get("decay_epochs") or train["max_epochs"]
    return LearningRate(
        peak=float(train["lr"]),
        schedule=str(train.get("lr_schedule", "constant")),
        warmup_steps=int(train.get("warmup_steps", 0)),
        decay_steps=int(horizon) * max(1, steps_per_epoch),
        min_lr_ratio=float(train.get("min_lr_ratio", 0.0)),
        plateau_patience=int(train.get("plateau_patience", 4)),
        plateau_factor=float(train.get("plateau_factor", 0.3)),
        min_delta=float(train.get("min_delta", 0.0)),
    )


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    """AdaBelief (the paper: adabelief-pytorch 0.2's defaults — eps 1e-16, decoupled weight decay,
    rectification) or AdamW (the authors' released code), with the given rate, betas and weight decay."""
    if name == "adabelief":
        from adabelief_pytorch import AdaBelief

        return AdaBelief(params, lr=lr, betas=betas, weight_decay=weight_decay, print_change_log=False)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise UserError(f"train.optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
