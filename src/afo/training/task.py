"""The Lightning task: loss (SmoothL1 + LayerSelector entropy), targets (ground truth, dark knowledge), the
optimiser and its learning-rate schedule (:mod:`afo.training.schedule`), and the validation score that early
stopping, checkpoints and the soup are judged by."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from afo.errors import UserError
from afo.metrics import PearsonAccumulator
from afo.model import EncodingModel
from afo.training.datamodule import Batch, ValChunk
from afo.training.lightning import pl
from afo.training.schedule import LearningRate, make_optimizer
from afo.training.subjects import SubjectData, TrainingDataError


def masked_smooth_l1(
    pred: torch.Tensor, target: torch.Tensor, beta: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """SmoothL1 over the finite targets (and ``mask``ed columns); 0 when nothing is left.

    pred, target [b, n]; mask bool [n]. NaN targets are missing trials or voxels and carry no gradient.
    """
    keep = torch.isfinite(target)
    if mask is not None:
        keep = keep & mask.unsqueeze(0)
    if not bool(keep.any()):
        return pred.sum() * 0.0
    return F.smooth_l1_loss(pred[keep], target[keep], beta=beta)


def _forward_chunk(model: EncodingModel, chunk: ValChunk, device: torch.device) -> torch.Tensor:
    """Predictions float32 [b, n] of a validation chunk on the CPU (as :func:`afo.training.predict.predict_images`)."""
    return model([f.to(device) for f in chunk.features], chunk.key).float().cpu()


class ValidationR:
    """The validation score, accumulated chunk by chunk: per subject a :class:`afo.metrics.PearsonAccumulator`
    over its ``own`` voxels, so no subject's predictions or targets are held whole."""

    def __init__(self, subjects: Sequence[SubjectData]):
        self.subjects = {s.key: s for s in subjects}
        self.acc: dict[str, PearsonAccumulator] = {}

    def add(self, chunk: ValChunk, pred: torch.Tensor) -> None:
        own = self.subjects[chunk.key].own
        acc = self.acc.setdefault(chunk.key, PearsonAccumulator(int(own.sum())))
        acc.add(pred.numpy()[:, own], chunk.targets.numpy()[:, own])

    def pooled(self) -> float:
        """Mean Pearson r over the ``own`` voxels of all subjects on the validation images (repeat-averaged).

        Voxels are pooled across subjects, so each voxel counts once, as in the paper's tables.
        """
        scores = [r[np.isfinite(r)] for r in (acc.r() for acc in self.acc.values())]
        pooled = np.concatenate(scores) if scores else np.empty(0)
        if pooled.size == 0:
            raise TrainingDataError(
                "no validation images with finite responses on the monitored voxels: cannot checkpoint"
            )
        return float(pooled.mean())


@torch.no_grad()
def validation_score(
    model: EncodingModel, loader: Iterable[ValChunk], subjects: Sequence[SubjectData], device: torch.device
) -> float:
    """:meth:`ValidationR.pooled` of ``model`` (eval mode) over a validation loader, outside the trainer (the soup).

    The chunks' features must be on ``device`` already (:meth:`afo.training.datamodule.TrainingData.on_device`).
    """
    was_training = model.training
    model.eval()
    score = ValidationR(subjects)
    for chunk in loader:
        score.add(chunk, _forward_chunk(model, chunk, device))
    model.train(was_training)
    return score.pooled()


class EncodingTask(pl.LightningModule):
    """Trains an :class:`EncodingModel` on mixed-subject batches.

    Loss per subject in the batch: SmoothL1 against the target, plus ``lambda_entropy`` * sum(eta log eta)
    (the LayerSelector regulariser). Targets by mode:
      - ``gt``: ground truth on every modelled voxel;
      - ``helpers``: ground truth on the own voxels, dark knowledge on the others (stage 2; with ground truth
        as the "dark knowledge" this is the noDK baseline). ``own_weight`` None: one mean over all of a subject's
        voxels (own and helpers alike); a number w: w * mean over its own voxels + (1 - w) * mean over its helper
        voxels (a subject with only one kind in the batch: that kind's mean);
      - ``gt+dk``: (1 - dk_weight) * loss(ground truth) + dk_weight * loss(dark knowledge) on every voxel (stage 3).
    """

    def __init__(
        self,
        model: EncodingModel,
        val_subjects: Sequence[SubjectData],
        lr: float,
        weight_decay: float,
        betas: Sequence[float],
        lambda_entropy: float,
        smoothl1_beta: float,
        target_mode: str = "gt",
        dk_weight: float = 0.5,
        own_weight: float | None = None,
        optimizer: str = "adabelief",
        schedule: LearningRate | None = None,
    ):
        super().__init__()
        if target_mode not in ("gt", "helpers", "gt+dk"):
            raise UserError(f"target_mode {target_mode!r} is not gt, helpers or gt+dk")
        self.model = model
        self.val_subjects = list(val_subjects)
        self._val = ValidationR(self.val_subjects)
        self.weight_decay, self.betas = weight_decay, tuple(betas)
        self.lambda_entropy, self.beta = lambda_entropy, smoothl1_beta
        self.target_mode, self.dk_weight = target_mode, dk_weight
        self.own_weight = own_weight
        self.optimizer_name = optimizer
        # The schedule holds the peak rate; without one, lr is a constant rate (the paper).
        self.schedule = schedule if schedule is not None else LearningRate(peak=lr)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        lr = self.schedule.lr(self.global_step)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = lr

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        core = self.model.core(batch.features)
        loss = torch.zeros((), device=self.device)
        for key, start, stop in batch.parts:
            vi = batch.voxel_index[key]
            pred = self.model.readout([c[start:stop] for c in core], key, vi)
            target = batch.targets[key]
            if self.target_mode == "gt":
                fit = masked_smooth_l1(pred, target, self.beta)
            elif self.target_mode == "helpers":
                own = batch.own[key]
                if self.own_weight is not None and bool(own.any()) and not bool(own.all()):
                    fit = self.own_weight * masked_smooth_l1(pred, target, self.beta, own) + (
                        1 - self.own_weight
                    ) * masked_smooth_l1(pred, batch.dk[key], self.beta, ~own)
                else:
                    composite = torch.where(own.unsqueeze(0), target, batch.dk[key])
                    fit = masked_smooth_l1(pred, composite, self.beta)
            else:
                fit = (1 - self.dk_weight) * masked_smooth_l1(
                    pred, target, self.beta
                ) + self.dk_weight * masked_smooth_l1(pred, batch.dk[key], self.beta)
            weight = (stop - start) / batch.features[0].shape[0]
            loss = loss + weight * (fit + self.lambda_entropy * self.model.regularizer(key, vi))
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.features[0].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = ValidationR(self.val_subjects)

    def validation_step(self, batch: ValChunk, batch_idx: int) -> None:
        # Per-voxel r over all of a subject's images, accumulated chunk by chunk, scored at the epoch's end.
        self._val.add(batch, _forward_chunk(self.model, batch, self.device))

    def on_validation_epoch_end(self) -> None:
        score = self._val.pooled()
        self._val = ValidationR(self.val_subjects)
        # Under DDP every rank scores all validation images with the same weights: the mean over ranks is the score.
        self.log("val_r", score, prog_bar=True, batch_size=1, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.schedule.observe(score)
        self.log("lr", self.schedule.lr(self.global_step), batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["afo_lr_schedule"] = self.schedule.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "afo_lr_schedule" in checkpoint:
            self.schedule.load_state_dict(checkpoint["afo_lr_schedule"])

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        # The rate is set before every step (on_train_batch_start); this one is the step-0 value.
        return make_optimizer(self.optimizer_name, params, self.schedule.lr(0), self.betas, self.weight_decay)
