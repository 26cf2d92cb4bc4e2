"""TopyNeck: one subject's readout positions and layer weights, from its voxel coordinates.

Per subject (paper section 3.1): PE of the coordinates -> RetinaMapper ``u`` and LayerSelector ``eta``;
plus, per layer, a global feature ``q_l = MLP(GlobalAvgPool ⊕ GlobalMaxPool)`` that is added to every
voxel's bilinear sample. The coordinates are buffers of this module (saved in checkpoints), so a
trained model carries the geometry it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from afo.model.pe import SinusoidalPE, fit_rescale
from afo.model.retina import FrozenRetinaMapper, LayerSelector, RetinaMapper, UniformLayerSelector

RETINA_MAPPERS = ("learned", "frozen")
LAYER_SELECTORS = ("learned", "uniform", "single")


class GlobalPoolMLP(nn.Module):
    """``q = MLP(concat(GlobalAvgPool(M), GlobalMaxPool(M)))``. Shapes: ``[B, D, h, w] -> [B, D]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat((x.mean(dim=(2, 3)), x.amax(dim=(2, 3))), dim=1)
        return self.mlp(pooled)


class TopyNeck(nn.Module):
    """RetinaMapper + LayerSelector + per-layer global features of one subject.

    Args:
        coords: ``[N, k]`` voxel coordinates (mm, or any k-D layout such as EEG sensor position and time).
        n_layers: number of tapped layers ``L``.
        dim: feature dimension ``D`` of the core's output.
        pe_frequencies, pe_max_period: see :class:`~afo.model.pe.SinusoidalPE`; the coordinates are
            rescaled over *all* N voxels so the longest axis spans ``[0, pe_max_period]``.
        mlp_width: hidden width of the RetinaMapper and LayerSelector MLPs.
        sigma: RetinaMapper jitter std, applied only when ``retina(..., jitter=True)`` (the model: training mode).
        retina_mapper: ``"learned"`` or ``"frozen"`` (FrozenRM, ``u = 0``).
        layer_selector: ``"learned"``, ``"uniform"`` (FrozenLS) or ``"single"`` (NoRegLS).
        global_pool: add the global feature (False = "w/o GlobalPool").
    """

    def __init__(
        self,
        coords: Tensor | np.ndarray,
        n_layers: int,
        dim: int,
        pe_frequencies: int = 32,
        pe_max_period: float = 100.0,
        mlp_width: int = 128,
        sigma: float = 0.01,
        retina_mapper: str = "learned",
        layer_selector: str = "learned",
        global_pool: bool = True,
    ) -> None:
        super().__init__()
        coords = torch.as_tensor(np.asarray(coords), dtype=torch.float32)
        if coords.ndim != 2 or coords.shape[0] == 0 or not torch.isfinite(coords).all():
            raise ValueError(f"coords must be a finite [N > 0, k] array, got shape {tuple(coords.shape)}")
        if retina_mapper not in RETINA_MAPPERS:
            raise ValueError(f"retina_mapper must be one of {RETINA_MAPPERS}, got {retina_mapper!r}")
        if layer_selector not in LAYER_SELECTORS:
            raise ValueError(f"layer_selector must be one of {LAYER_SELECTORS}, got {layer_selector!r}")
        self.n_voxels, self.n_layers, self.dim = coords.shape[0], n_layers, dim
        self.retina_mode, self.selector_mode = retina_mapper, layer_selector

        offset, scale = fit_rescale(coords, pe_max_period)
        self.register_buffer("coords", coords)  # [N, k] as given
        self.register_buffer("coord_offset", offset)  # [k]
        self.register_buffer("coord_scale", scale)  # scalar
        self.pe = SinusoidalPE(coords.shape[1], pe_frequencies, pe_max_period)

        self.retina_mapper: nn.Module = (
            RetinaMapper(self.pe.out_features, mlp_width, sigma) if retina_mapper == "learned" else FrozenRetinaMapper()
        )
        self.layer_selector: nn.Module = (
            UniformLayerSelector(n_layers)
            if layer_selector == "uniform"
            else LayerSelector(self.pe.out_features, n_layers, mlp_width, hard=layer_selector == "single")
        )
        self.global_mlps = nn.ModuleList(GlobalPoolMLP(dim) for _ in range(n_layers)) if global_pool else None

    def encode(self, voxel_index: Tensor | None = None) -> Tensor:
        """Positional encoding of the voxels in ``voxel_index`` (None = all): ``[n, k * 2 * F]``."""
        c = self.coords if voxel_index is None else self.coords[voxel_index.to(self.coords.device)]
        return self.pe((c - self.coord_offset) * self.coord_scale)

    def retina(self, voxel_index: Tensor | None = None, jitter: bool = False) -> Tensor:
        """``u [n, 2]`` in ``[-1, 1]`` (grid_sample convention); jittered only when ``jitter``."""
        return self.retina_mapper(self.encode(voxel_index), jitter=jitter)

    def layer_weights(self, voxel_index: Tensor | None = None) -> Tensor:
        """``eta [n, L]``, rows sum to 1 (one-hot in the ``"single"`` mode)."""
        return self.layer_selector(self.encode(voxel_index))

    def regularizer(self, voxel_index: Tensor | None = None) -> Tensor:
        """Scalar: mean over voxels of ``sum_l eta log eta``; 0 for the uniform and single selectors."""
        return self.layer_selector.regularizer(self.encode(voxel_index))

    def global_features(self, core_out: Sequence[Tensor]) -> Tensor | None:
        """``[B, L, D]`` global feature of each layer, or None without global pooling."""
        if self.global_mlps is None:
            return None
        if len(core_out) != self.n_layers:
            raise ValueError(f"expected {self.n_layers} layers, got {len(core_out)}")
        return torch.stack([mlp(x) for mlp, x in zip(self.global_mlps, core_out)], dim=1)

    def mlps(self) -> dict[str, nn.Module]:
        """The learnable coordinate MLPs (what paper 4.6 pre-trains and freezes), by part name."""
        parts: dict[str, nn.Module] = {}
        if isinstance(self.retina_mapper, RetinaMapper):
            parts["retina_mapper"] = self.retina_mapper.mlp
        if isinstance(self.layer_selector, LayerSelector):
            parts["layer_selector"] = self.layer_selector.mlp
        return parts

    def extra_repr(self) -> str:
        return f"n_voxels={self.n_voxels}, retina_mapper={self.retina_mode!r}, layer_selector={self.selector_mode!r}"
