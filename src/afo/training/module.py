"""The Lightning module: loss, optimiser, validation score of one encoding model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from afo.metrics import pearson_r
from afo.model import EncodingModel
from afo.training.data import Batch, FeatureBank, SubjectData


def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SmoothL1 over the finite targets (and ``mask``ed columns); 0 when nothing is left.

    pred, target [b, n]; mask bool [n]. NaN targets are missing trials or voxels and carry no gradient.
    """
    keep = torch.isfinite(target)
    if mask is not None:
        keep = keep & mask.unsqueeze(0)
    if not bool(keep.any()):
        return pred.sum() * 0.0
    return F.smooth_l1_loss(pred[keep], target[keep], beta=beta)


@torch.no_grad()
def predict_images(
    model: EncodingModel, bank: FeatureBank, subject: SubjectData, images: np.ndarray, device: torch.device, chunk: int = 64
) -> np.ndarray:
    """Predictions [m, n] for the given image rows of the subject's dataset, eval mode (no jitter)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), chunk):
        feats = [f.to(device) for f in bank.get(subject.dataset, images[start : start + chunk])]
        out.append(model(feats, subject.key).float().cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, subject.voxels.size), dtype=np.float32)
    return torch.cat(out).numpy()


def validation_score(model: EncodingModel, bank: FeatureBank, subjects: Sequence[SubjectData], device: torch.device) -> float:
    """Mean Pearson r over the ``own`` voxels of all subjects on the validation images (repeat-averaged).

    Voxels are pooled across subjects, so each voxel counts once, as in the paper's tables.
    """
    scores = []
    for s in subjects:
        images = s.split_images["val"]
        if images.size < 3 or not s.own.any():
            continue
        pred = predict_images(model, bank, s, images, device)
        r = pearson_r(pred[:, s.own], s.split_means["val"].numpy()[:, s.own])
        scores.append(r[np.isfinite(r)])
    pooled = np.concatenate(scores) if scores else np.empty(0)
    if pooled.size == 0:
        raise ValueError("no validation images with finite responses on the monitored voxels: cannot checkpoint")
    return float(pooled.mean())


class EncodingTask(pl.LightningModule):
    """Trains an :class:`EncodingModel` on mixed-subject batches.

    Loss per subject in the batch: SmoothL1 against the target, plus ``lambda_entropy`` * sum(eta log eta)
    (the LayerSelector regulariser). Targets by mode:
      - ``gt``: ground truth on every modelled voxel;
      - ``helpers``: ground truth on the own voxels, dark knowledge on the others (stage 2; with ground truth
        as the "dark knowledge" this is the noDK baseline);
      - ``gt+dk``: (1 - dk_weight) * loss(ground truth) + dk_weight * loss(dark knowledge) on every voxel (stage 3).
    """

    def __init__(
        self,
        model: EncodingModel,
        bank: FeatureBank,
        val_subjects: Sequence[SubjectData],
        lr: float,
        weight_decay: float,
        betas: Sequence[float],
        lambda_entropy: float,
        smoothl1_beta: float,
        target_mode: str = "gt",
        dk_weight: float = 0.5,
    ):
        super().__init__()
        if target_mode not in ("gt", "helpers", "gt+dk"):
            raise ValueError(f"target_mode {target_mode!r} is not gt, helpers or gt+dk")
        self.model = model
        self.bank = bank
        self.val_subjects = list(val_subjects)
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.lambda_entropy, self.beta = lambda_entropy, smoothl1_beta
        self.target_mode, self.dk_weight = target_mode, dk_weight

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # Validation "batches" are a single dummy item: the whole validation set is scored in validation_step.
        return batch.to(device) if isinstance(batch, Batch) else batch

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
                composite = torch.where(own.unsqueeze(0), target, batch.dk[key])
                fit = masked_smooth_l1(pred, composite, self.beta)
            else:
                fit = (1 - self.dk_weight) * masked_smooth_l1(pred, target, self.beta) + self.dk_weight * masked_smooth_l1(
                    pred, batch.dk[key], self.beta
                )
            weight = (stop - start) / batch.features[0].shape[0]
            loss = loss + weight * (fit + self.lambda_entropy * self.model.regularizer(key, vi))
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.features[0].shape[0])
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        # The whole validation set is scored at once (per-voxel r needs all images together).
        score = validation_score(self.model, self.bank, self.val_subjects, self.device)
        self.log("val_r", score, prog_bar=True, batch_size=1)

    def configure_optimizers(self):
        from adabelief_pytorch import AdaBelief

        params = [p for p in self.model.parameters() if p.requires_grad]
        # adabelief-pytorch 0.2 defaults (eps 1e-16, decoupled weight decay, rectification) with the paper's
        # lr, betas and weight decay.
        return AdaBelief(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay, print_change_log=False)
