"""Stage 2's balance of the own ROI against its helpers (EncodingTask, target mode ``helpers``)."""

from __future__ import annotations

import pytest
import torch

from afo.training.datamodule import Batch
from afo.training.task import EncodingTask


class ZeroModel(torch.nn.Module):
    """Predicts 0 for every voxel, so the loss is a plain function of the targets."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def core(self, features):
        return features

    def readout(self, core_out, subject, voxel_index=None):
        return self.w * core_out[0][:, :1, 0, 0] + torch.zeros(core_out[0].shape[0], voxel_index.numel())

    def regularizer(self, subject, voxel_index=None):
        return torch.zeros(())


def batch(own: list[bool]) -> Batch:
    """Two trials of one subject; own voxels' ground truth is 1, the helpers' dark knowledge 3."""
    n = len(own)
    return Batch(
        features=[torch.ones(2, 1, 1, 1)], parts=[("ds/s1", 0, 2)],
        targets={"ds/s1": torch.ones(2, n)}, voxel_index={"ds/s1": torch.arange(n)},
        own={"ds/s1": torch.tensor(own)}, dk={"ds/s1": torch.full((2, n), 3.0)},
    )  # fmt: skip


def loss(own: list[bool], own_weight: float | None) -> float:
    task = EncodingTask(ZeroModel(), [], lr=0.01, weight_decay=0.0, betas=(0.9, 0.999), lambda_entropy=0.0,
                        smoothl1_beta=0.01, target_mode="helpers", own_weight=own_weight)  # fmt: skip
    task.log = lambda *a, **k: None  # no trainer here
    return float(task.training_step(batch(own), 0).detach())


def test_per_voxel_mean_by_default_and_per_group_weighting():
    half = 0.005  # SmoothL1 with beta 0.01: |x| - beta / 2 for |x| > beta
    # Default: one mean over all voxels, so 1 own voxel of 4 weighs 1/4.
    assert loss([True, False, False, False], None) == pytest.approx((1 + 3 * 3) / 4 - half)
    # own_weight 0.5: the own ROI's mean and the helpers' mean weigh half each, whatever their voxel counts.
    assert loss([True, False, False, False], 0.5) == pytest.approx(0.5 * 1 + 0.5 * 3 - half)
    assert loss([True, False, False, False], 0.8) == pytest.approx(0.8 * 1 + 0.2 * 3 - half)
    # A subject with only helpers (or only own voxels) in the batch: that group's mean, at full weight.
    assert loss([False, False], 0.8) == pytest.approx(3 - half)
    assert loss([True, True], 0.8) == pytest.approx(1 - half)
