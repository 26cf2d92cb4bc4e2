"""Sinusoidal positional encoding of voxel coordinates (the input of RetinaMapper and LayerSelector).

A subject's coordinates are first rescaled *once per subject* (over all its voxels, not over the
voxels of a mini-batch, so that a voxel's encoding does not depend on which other voxels were
sampled with it): shifted to start at 0 and scaled isotropically so that the longest axis spans
``[0, max_period]``. Each axis is then encoded by ``n_frequencies`` sines and as many cosines at
log-spaced angular frequencies ``max_period ** (-k / n_frequencies)``, ``k = 0 .. n_frequencies-1``
(from 1 rad per unit down to about ``1 / max_period``): the fastest wave resolves neighbouring
voxels, the slowest one is still monotonic over the whole (rescaled) brain.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def fit_rescale(coords: Tensor, max_period: float) -> tuple[Tensor, Tensor]:
    """Offset and scale that map ``coords`` so that the longest axis spans ``[0, max_period]``.

    Args:
        coords: ``[N, k]`` coordinates of all voxels of one subject.
        max_period: length of the longest axis after rescaling.

    Returns:
        ``offset [k]`` and a scalar ``scale`` with ``(coords - offset) * scale`` the rescaled coordinates.
        A subject whose voxels all sit at one point gets ``scale = 1`` (nothing to stretch).
    """
    if coords.ndim != 2 or coords.shape[0] == 0:
        raise ValueError(f"coords must be [N > 0, k], got {tuple(coords.shape)}")
    offset = coords.amin(dim=0)
    span = (coords.amax(dim=0) - offset).amax()
    scale = max_period / span if span > 0 else torch.ones((), dtype=coords.dtype)
    return offset, torch.as_tensor(scale, dtype=coords.dtype)


class SinusoidalPE(nn.Module):
    """Per-axis sin/cos encoding of already rescaled coordinates.

    Args:
        in_dims: number of coordinate axes ``k`` (3 for xyz).
        n_frequencies: frequencies per axis; each gives one sine and one cosine.
        max_period: base of the log-spaced frequencies (and the span the coordinates were rescaled to).

    Shapes:
        input ``[n, in_dims]`` -> output ``[n, in_dims * 2 * n_frequencies]``
        (per axis: ``n_frequencies`` sines, then ``n_frequencies`` cosines).
    """

    def __init__(self, in_dims: int = 3, n_frequencies: int = 32, max_period: float = 100.0) -> None:
        super().__init__()
        if n_frequencies < 1 or max_period <= 0:
            raise ValueError("n_frequencies must be >= 1 and max_period > 0")
        self.in_dims = in_dims
        self.n_frequencies = n_frequencies
        self.max_period = float(max_period)
        self.out_features = in_dims * 2 * n_frequencies
        k = torch.arange(n_frequencies, dtype=torch.float64)
        omega = torch.exp(-math.log(max_period) * k / n_frequencies)
        # Not persistent: a pure function of the constructor arguments, kept out of checkpoints.
        self.register_buffer("omega", omega.float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x [n, in_dims]`` (rescaled) -> ``[n, in_dims * 2 * n_frequencies]``."""
        phase = x.unsqueeze(-1) * self.omega.to(x.dtype)  # [n, k, F]
        return torch.cat((phase.sin(), phase.cos()), dim=-1).flatten(1)

    def extra_repr(self) -> str:
        return f"in_dims={self.in_dims}, n_frequencies={self.n_frequencies}, max_period={self.max_period}"
