"""VoxelHead: a linear regression per voxel, no weight sharing (paper Figure 2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class VoxelHead(nn.Module):
    """Per-voxel weight ``[n_voxels, dim]`` and bias ``[n_voxels]``: ``out = mean_d(m * w_n) + b_n``.

    The mean (not the sum) over ``d`` follows the authors' code ("mean is critical"): it keeps the
    prediction's scale independent of ``dim``. The readout applies the head (see ``readout.py``); this
    module holds the parameters and hands out the rows of the voxels asked for.
    """

    def __init__(self, n_voxels: int, dim: int) -> None:
        super().__init__()
        self.n_voxels, self.dim = n_voxels, dim
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(n_voxels, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_voxels).uniform_(-bound, bound))

    def params(self, voxel_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(weight [n, dim], bias [n])`` of the voxels in ``voxel_index`` (None = all)."""
        if voxel_index is None:
            return self.weight, self.bias
        return self.weight[voxel_index], self.bias[voxel_index]

    def forward(self, m: Tensor, voxel_index: Tensor | None = None) -> Tensor:
        """``m [B, n, dim]`` (already mixed features) -> ``[B, n]``."""
        w, b = self.params(voxel_index)
        return (m * w).mean(dim=-1) + b

    def extra_repr(self) -> str:
        return f"n_voxels={self.n_voxels}, dim={self.dim}"
