"""Sinusoidal positional encoding of voxel coordinates (the input of RetinaMapper and LayerSelector).

A subject's coordinates are first rescaled in the subject's *coordinate frame*: the bounding box of
all its usable voxels (:func:`subject_frame`), shifted to start at 0 and scaled isotropically so that
the longest axis spans ``[0, max_period]``. The frame is a property of the subject, not of a model or a
mini-batch: a voxel's encoding does not depend on which other voxels were sampled with it, nor on which
subset of the subject a model holds (a stage-1 model of one ROI reads its voxels in the same frame as the
all-voxel model whose RetinaMapper/LayerSelector MLPs it loads).

Each axis is then encoded by ``n_frequencies`` sines and as many cosines at log-spaced angular
frequencies ``max_period ** (-k / n_frequencies)``, ``k = 0 .. n_frequencies-1`` (from 1 rad per unit
down to about ``1 / max_period``): the fastest wave resolves neighbouring voxels, the slowest one is
still monotonic over the whole (rescaled) brain.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn


class CoordinateFrame(NamedTuple):
    """A subject's coordinate frame: the per-axis bounding box ``lo [k]``, ``hi [k]`` of its voxels.

    Computed once per subject from *all* its usable voxels (:func:`subject_frame`) and given to every model
    of any subset of that subject, so that they all encode a voxel's coordinates identically.
    """

    lo: Tensor
    hi: Tensor

    def rescale(self, max_period: float) -> tuple[Tensor, Tensor]:
        """``offset [k]`` and scalar ``scale`` with ``(coords - offset) * scale`` spanning ``[0, max_period]``
        on the frame's longest axis (isotropic). A frame of one point gets ``scale = 1`` (nothing to stretch)."""
        span = (self.hi - self.lo).amax()
        scale = max_period / span if span > 0 else torch.ones((), dtype=self.lo.dtype)
        return self.lo.clone(), torch.as_tensor(scale, dtype=self.lo.dtype)


def _as_coords(coords: Tensor | np.ndarray) -> Tensor:
    """``[N > 0, k]`` finite float32 tensor, or ValueError."""
    coords = torch.as_tensor(np.asarray(coords), dtype=torch.float32)
    if coords.ndim != 2 or coords.shape[0] == 0 or not torch.isfinite(coords).all():
        raise ValueError(f"coords must be a finite [N > 0, k] array, got shape {tuple(coords.shape)}")
    return coords


def subject_frame(coords: Tensor | np.ndarray) -> CoordinateFrame:
    """The coordinate frame of a subject from its voxel coordinates.

    Args:
        coords: ``[N, k]`` coordinates of *all usable voxels* of the subject (the prepared store's
            ``coords(subject)`` without its bad voxels), whatever subset a model of it holds.

    Returns:
        :class:`CoordinateFrame` (float32 ``lo [k]``, ``hi [k]``).
    """
    c = _as_coords(coords)
    return CoordinateFrame(c.amin(dim=0), c.amax(dim=0))


def as_frame(frame: CoordinateFrame | tuple, k: int) -> CoordinateFrame:
    """A ``(lo, hi)`` pair (tensors or arrays) as a float32 :class:`CoordinateFrame` of ``k`` axes, or ValueError."""
    if len(frame) != 2:
        raise ValueError(f"a coordinate frame is a (lo, hi) pair, got {len(frame)} items")
    lo, hi = (torch.as_tensor(np.asarray(v), dtype=torch.float32).reshape(-1) for v in frame)
    if lo.numel() != k or hi.numel() != k or not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError(
            f"a coordinate frame needs finite lo and hi of {k} axes, got {tuple(lo.shape)} and {tuple(hi.shape)}"
        )
    if (hi < lo).any():
        raise ValueError(f"coordinate frame with hi < lo: lo={lo.tolist()}, hi={hi.tolist()}")
    return CoordinateFrame(lo, hi)


def fit_rescale(coords: Tensor, max_period: float) -> tuple[Tensor, Tensor]:
    """Offset and scale that map ``coords`` so that the longest axis spans ``[0, max_period]``.

    Shorthand for ``subject_frame(coords).rescale(max_period)``: ``offset [k]`` and a scalar ``scale`` with
    ``(coords - offset) * scale`` the rescaled coordinates.
    """
    return subject_frame(coords).rescale(max_period)


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

    def __init__(self, in_dims: int, n_frequencies: int, max_period: float) -> None:
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
