"""RetinaMapper (where in the image a voxel looks) and LayerSelector (which layers it reads).

Both map the positional encoding of a voxel's coordinates through a small MLP
(Linear-GELU-Linear-GELU-Linear, as in the authors' code), so that neighbouring voxels get similar
answers (the paper's "spatial proximity"). The last Linear starts at zero: every voxel starts at the
image centre with uniform layer weights and the maps unfold during training.

Ablations of the paper's Table 2 are separate classes with the same interface:
:class:`FrozenRetinaMapper` (FrozenRM), :class:`UniformLayerSelector` (FrozenLS) and
``LayerSelector(hard=True)`` (the model option ``layer_selector: hard``). NoRegLS has two readings in the
paper: its name says "no regulariser" -- the learned soft selector trained with ``lambda_entropy = 0``,
after which it converges on one layer by itself (section 3.1); that is a training setting, not a class
here. Table 2's caption says it "selects a single layer" -- that reading is ``hard``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def selector_mlp(in_features: int, width: int, out_features: int) -> nn.Sequential:
    """Linear-GELU-Linear-GELU-Linear with a zero-initialised output layer. ``[n, in] -> [n, out]``."""
    mlp = nn.Sequential(
        nn.Linear(in_features, width),
        nn.GELU(),
        nn.Linear(width, width),
        nn.GELU(),
        nn.Linear(width, out_features),
    )
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


class RetinaMapper(nn.Module):
    """``u = tanh(MLP(PE))``: a voxel's position on the RetinaGrid.

    Convention of ``F.grid_sample``: ``u[:, 0]`` is x (-1 left .. +1 right), ``u[:, 1]`` is y
    (-1 top .. +1 bottom). With ``jitter=True`` Gaussian noise ``N(0, sigma)`` is added and the result
    clamped to ``[-1, 1]`` (the paper's non-trainable training-time variance; 0 at inference).

    Shapes: ``pe [n, in_features] -> u [n, 2]``.
    """

    def __init__(self, in_features: int, width: int, sigma: float) -> None:
        super().__init__()
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.mlp = selector_mlp(in_features, width, 2)

    def forward(self, pe: Tensor, jitter: bool = False) -> Tensor:
        u = torch.tanh(self.mlp(pe))
        if jitter and self.sigma > 0:
            u = (u + self.sigma * torch.randn_like(u)).clamp(-1.0, 1.0)
        return u

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class FrozenRetinaMapper(nn.Module):
    """FrozenRM: every voxel looks at the image centre, ``u = 0``; no parameters, no jitter.

    No jitter because the ablation asks what the model does *without* a retinotopic map; jitter around a
    fixed point would only blur the centre sample.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sigma = 0.0

    def forward(self, pe: Tensor, jitter: bool = False) -> Tensor:
        return pe.new_zeros(pe.shape[0], 2)


class LayerSelector(nn.Module):
    """``eta = softmax(MLP(PE))`` over the ``n_layers`` tapped layers.

    With ``hard=True`` (one layer per voxel: Table 2's "selects a single layer" reading of NoRegLS, distinct
    from NoRegLS as ``lambda_entropy = 0`` on the soft selector) the forward value is the one-hot argmax of
    the softmax and the gradient is the softmax's (straight-through estimator), so the selector still learns.

    Shapes: ``pe [n, in_features] -> eta [n, n_layers]`` (rows sum to 1).
    """

    def __init__(self, in_features: int, n_layers: int, width: int, hard: bool = False) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.hard = hard
        self.mlp = selector_mlp(in_features, width, n_layers)

    def logits(self, pe: Tensor) -> Tensor:
        """``[n, in_features] -> [n, n_layers]`` unnormalised log-weights."""
        return self.mlp(pe)

    def forward(self, pe: Tensor) -> Tensor:
        soft = self.logits(pe).softmax(dim=-1)
        if not self.hard:
            return soft
        one_hot = F.one_hot(soft.argmax(dim=-1), self.n_layers).to(soft.dtype)
        # (soft - soft.detach()) is exactly 0 in value, so the forward value is exactly one-hot.
        return one_hot + (soft - soft.detach())

    def regularizer(self, pe: Tensor) -> Tensor:
        """Mean over voxels of ``sum_l eta_l log eta_l`` (negative entropy, <= 0); 0 when ``hard``.

        Minimising ``lambda * regularizer`` raises the entropy of eta, which is what keeps the soft selector
        from collapsing onto one layer (paper eq. 3). The hard selector has no entropy to regularise.
        """
        if self.hard:
            return pe.new_zeros(())
        log_eta = self.logits(pe).log_softmax(dim=-1)  # log_softmax: finite even where eta underflows
        return (log_eta.exp() * log_eta).sum(dim=-1).mean()

    def extra_repr(self) -> str:
        return f"n_layers={self.n_layers}, hard={self.hard}"


class UniformLayerSelector(nn.Module):
    """FrozenLS: every voxel averages all layers, ``eta = 1 / L``; no parameters, zero regulariser."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.n_layers = n_layers

    def forward(self, pe: Tensor) -> Tensor:
        return pe.new_full((pe.shape[0], self.n_layers), 1.0 / self.n_layers)

    def regularizer(self, pe: Tensor) -> Tensor:
        return pe.new_zeros(())

    def extra_repr(self) -> str:
        return f"n_layers={self.n_layers}"
