"""TopyNeck: one subject's readout positions and layer weights, from its voxel coordinates.

Per subject (paper section 3.1): PE of the coordinates -> RetinaMapper ``u`` and LayerSelector ``eta``;
plus, per layer, a global feature ``q_l = MLP(GlobalAvgPool ⊕ GlobalMaxPool)`` that is added to every
voxel's bilinear sample. The coordinates and the subject's coordinate frame (the rescale of
:mod:`afo.model.pe`) are buffers of this module (saved in checkpoints), so a trained model carries the
geometry it was trained on, and its RetinaMapper/LayerSelector MLPs keep their meaning when loaded into a
model of another subset of the same subject built in the same frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from afo.model.pe import CoordinateFrame, SinusoidalPE, as_frame, subject_frame
from afo.model.retina import FrozenRetinaMapper, LayerSelector, RetinaMapper, UniformLayerSelector

RETINA_MAPPERS = ("learned", "frozen")
# "hard": Table 2's "selects a single layer" reading of NoRegLS (one-hot eta). The paper's *name* NoRegLS
# ("no regulariser") is the learned selector trained with lambda_entropy = 0, a training setting.
LAYER_SELECTORS = ("learned", "uniform", "hard")
# Older names still accepted (config files and model files written before the rename).
LAYER_SELECTOR_ALIASES = {"single": "hard"}


def canonical_layer_selector(name: str) -> str:
    """The :data:`LAYER_SELECTORS` name of ``name`` (aliases resolved), or ValueError."""
    name = LAYER_SELECTOR_ALIASES.get(name, name)
    if name not in LAYER_SELECTORS:
        raise ValueError(f"layer_selector must be one of {LAYER_SELECTORS}, got {name!r}")
    return name


def _inside(coords: Tensor, frame: CoordinateFrame) -> Tensor:
    """``coords`` if it is a finite ``[N > 0, k]`` array inside ``frame``, else ValueError.

    A voxel outside its subject's frame means the frame came from another subject or from a subset of
    the voxels (the bug the frame exists to prevent), so it is an error, not an extrapolation.
    """
    if coords.ndim != 2 or coords.shape[0] == 0 or not torch.isfinite(coords).all():
        raise ValueError(f"coords must be a finite [N > 0, k] array, got shape {tuple(coords.shape)}")
    tol = 1e-5 * (1.0 + torch.maximum(frame.lo.abs(), frame.hi.abs()))  # float32 round-off only
    if ((coords < frame.lo - tol) | (coords > frame.hi + tol)).any():
        raise ValueError(
            f"voxel coordinates span {coords.amin(0).tolist()} .. {coords.amax(0).tolist()}, outside the subject's "
            f"frame {frame.lo.tolist()} .. {frame.hi.tolist()}; compute the frame with subject_frame() from all "
            "usable voxels of this subject"
        )
    return coords


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
            rescaled in ``frame`` so its longest axis spans ``[0, pe_max_period]``.
        mlp_width: hidden width of the RetinaMapper and LayerSelector MLPs.
        sigma: RetinaMapper jitter std, applied only when ``retina(..., jitter=True)`` (the model: training mode).
        retina_mapper: ``"learned"`` or ``"frozen"`` (FrozenRM, ``u = 0``).
        layer_selector: ``"learned"``, ``"uniform"`` (FrozenLS) or ``"hard"`` (one layer per voxel: Table 2's
            "selects a single layer" reading of NoRegLS; ``"single"`` is an accepted old name).
        global_pool: add the global feature (False = "w/o GlobalPool").
        frame: the subject's :class:`~afo.model.pe.CoordinateFrame` (or a ``(lo [k], hi [k])`` pair), from
            :func:`~afo.model.pe.subject_frame` of *all* the subject's usable voxels. None: the bounding box of
            ``coords`` (right only for a model of all of them). Every coordinate must lie inside the frame.

    No argument has a default: :class:`~afo.model.encoder.EncodingModel`, which builds the necks, holds them.
    """

    # Buffers (register_buffer), declared for type checkers.
    coords: Tensor  # [N, k]
    coord_offset: Tensor  # [k]
    coord_scale: Tensor  # scalar

    def __init__(
        self,
        coords: Tensor | np.ndarray,
        n_layers: int,
        dim: int,
        pe_frequencies: int,
        pe_max_period: float,
        mlp_width: int,
        sigma: float,
        retina_mapper: str,
        layer_selector: str,
        global_pool: bool,
        frame: CoordinateFrame | tuple | None = None,
    ) -> None:
        super().__init__()
        if retina_mapper not in RETINA_MAPPERS:
            raise ValueError(f"retina_mapper must be one of {RETINA_MAPPERS}, got {retina_mapper!r}")
        layer_selector = canonical_layer_selector(layer_selector)
        frame = subject_frame(coords) if frame is None else as_frame(frame, np.shape(coords)[-1])
        coords = _inside(torch.as_tensor(np.asarray(coords), dtype=torch.float32), frame)
        self.n_voxels, self.n_layers, self.dim = coords.shape[0], n_layers, dim
        self.retina_mode, self.selector_mode = retina_mapper, layer_selector

        # Buffers, so a model file carries the frame (load_state_dict restores it whatever frame the
        # rebuilt model was constructed with).
        offset, scale = frame.rescale(pe_max_period)
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
            else LayerSelector(self.pe.out_features, n_layers, mlp_width, hard=layer_selector == "hard")
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
        """``eta [n, L]``, rows sum to 1 (one-hot in the ``"hard"`` mode)."""
        return self.layer_selector(self.encode(voxel_index))

    def regularizer(self, voxel_index: Tensor | None = None) -> Tensor:
        """Scalar: mean over voxels of ``sum_l eta log eta``; 0 for the uniform and hard selectors."""
        return self.layer_selector.regularizer(self.encode(voxel_index))

    def global_features(self, core_out: Sequence[Tensor]) -> Tensor | None:
        """``[B, L, D]`` global feature of each layer, or None without global pooling."""
        if self.global_mlps is None:
            return None
        if len(core_out) != self.n_layers:
            raise ValueError(f"expected {self.n_layers} layers, got {len(core_out)}")
        return torch.stack([mlp(x) for mlp, x in zip(self.global_mlps, core_out)], dim=1)

    def frame_rescale(self) -> dict[str, Tensor]:
        """``{"offset": [k], "scale": []}`` (detached CPU copies): the rescale the MLPs' inputs went through."""
        return {"offset": self.coord_offset.detach().cpu().clone(), "scale": self.coord_scale.detach().cpu().clone()}

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
