"""EncodingModel: shared ConvBlocks core + per-subject TopyNeck and VoxelHead (neuralpredictors manner).

The frozen backbone is not part of this module: it consumes the cached intermediate layers.
``core()`` is subject-free and can be run once per mini-batch, its output read out for several
subjects with ``readout()``; ``forward()`` is the two in one.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from afo.model.conv import ConvBlocks
from afo.model.head import VoxelHead
from afo.model.neck import TopyNeck
from afo.model.pe import CoordinateFrame
from afo.model.readout import efficient_readout, pixel_table

_MODULE_DICT_ATTRS = frozenset(dir(nn.ModuleDict()))
# Key of a subject's frame rescale in neck_mlp_state(), beside its MLP parts.
FRAME_KEY = "frame"


def _module_key(subject: str) -> str:
    """Subject name -> ModuleDict key, one-to-one.

    ModuleDict keys may not contain '.', be empty or shadow an attribute (a subject folder named "train"
    or "items"): '%' and '.' are percent-escaped and such names get a '%' prefix, which escaping never makes.
    """
    key = subject.replace("%", "%25").replace(".", "%2E")
    return "%" + key if not key or key in _MODULE_DICT_ATTRS else key


def model_defaults() -> dict[str, Any]:
    """Each setting of :class:`EncodingModel` (its keyword arguments but ``frames``, which is data, not a
    setting) and its default, read from the constructor's signature, their one home."""
    params = inspect.signature(EncodingModel.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty and p.name != "frames"}


class CoreOutput(list):
    """What :meth:`EncodingModel.core` returns: the list of ``[B, D, h_l, w_l]`` maps, which also memoises
    their :func:`~afo.model.readout.pixel_table`, so that reading several subjects out of one ``core()``
    call gathers from one table (one copy of the maps per batch instead of one per subject).
    Treat it as read-only; a plain list works too (the table is then built on each readout).
    """

    def pixel_table(self) -> Tensor:
        """``[sum_l h_l w_l, B * D]``; rebuilt if the grad mode changed since it was built."""
        grad = torch.is_grad_enabled()
        cached = getattr(self, "_table", None)
        if cached is None or cached[0] != grad:
            self._table = (grad, pixel_table(self))
        return self._table[1]


class EncodingModel(nn.Module):
    """Retinotopy-inspired brain encoding model (paper Figure 2) on cached backbone features.

    Args:
        layer_shapes: ``(C_l, h_l, w_l)`` of each cached backbone layer, shallowest first.
        subject_coords: subject name -> voxel coordinates ``[N_s, k]`` (``k = 3`` for xyz in mm; EEG/MEG:
            sensor position and time). Fixes each subject's voxel count and order.
        conv_width, out_dim, n_convs, kernel_size: ConvBlocks (``C -> conv_width -> ... -> out_dim = D``).
        pe_frequencies, pe_max_period: positional encoding (see :mod:`afo.model.pe`).
        mlp_width: hidden width of the RetinaMapper / LayerSelector MLPs.
        sigma: RetinaMapper jitter std, applied in training mode only.
        retina_mapper: ``"learned"`` or ``"frozen"`` (FrozenRM: ``u = 0`` for every voxel, no jitter).
        layer_selector: ``"learned"``, ``"uniform"`` (FrozenLS: ``eta = 1/L``) or ``"hard"`` (one-hot ``eta``
            in forward, straight-through gradient to the selector: Table 2's "selects a single layer" reading
            of NoRegLS; the other reading, the paper's name, is ``"learned"`` with ``lambda_entropy = 0``).
            ``"single"`` is accepted as the old name of ``"hard"``.
        global_pool: add ``q_l = MLP(GAP ⊕ GMP)`` of each layer to the samples (False = "w/o GlobalPool").
        readout_chunk: voxels per chunk of the readout, each chunk recomputed in backward to bound memory
            (None = all at once).
        frames: subject name -> its coordinate frame (:func:`~afo.model.pe.subject_frame` of *all* the
            subject's usable voxels in the prepared store, or a ``(lo [k], hi [k])`` pair), so that every model
            of any subset of a subject encodes its coordinates alike; extra subjects are ignored. None: each
            subject's frame is the bounding box of ``subject_coords`` (right only for all-voxel models).
            The frames are buffers (``necks.<subject>.coord_offset`` / ``coord_scale``), saved with the model.

    Shapes:
        ``forward(features, subject, voxel_index)``: features list of ``[B, C_l, h_l, w_l]`` (float16 or
        float32), ``voxel_index`` LongTensor ``[n]`` (None = all ``N_s``) -> ``[B, n]`` float32.

    The defaults of this signature are the model's defaults, written nowhere else (timm manner): the parts
    (TopyNeck, ConvBlocks, ...) take every setting from here, :func:`model_defaults` reads them for
    :class:`afo.training.modelfile.ModelConfig`, and a test holds the config schema's ``model`` defaults to them.
    """

    def __init__(
        self,
        layer_shapes: Sequence[tuple[int, int, int]],
        subject_coords: Mapping[str, Tensor | np.ndarray],
        conv_width: int = 768,
        out_dim: int = 256,
        n_convs: int = 3,
        kernel_size: int = 5,
        pe_frequencies: int = 32,
        pe_max_period: float = 100.0,
        mlp_width: int = 128,
        sigma: float = 0.01,
        retina_mapper: str = "learned",
        layer_selector: str = "learned",
        global_pool: bool = True,
        readout_chunk: int | None = None,
        frames: Mapping[str, CoordinateFrame | tuple] | None = None,
    ) -> None:
        super().__init__()
        self.layer_shapes = [tuple(int(v) for v in s) for s in layer_shapes]
        if not self.layer_shapes or any(len(s) != 3 for s in self.layer_shapes):
            raise ValueError(f"layer_shapes must be a non-empty list of (C, h, w), got {layer_shapes}")
        if len(subject_coords) == 0:
            raise ValueError("at least one subject is needed")
        if readout_chunk is not None and readout_chunk < 1:
            raise ValueError(f"readout_chunk must be >= 1 or None, got {readout_chunk}")
        if frames is not None:
            missing = [str(s) for s in subject_coords if s not in frames]
            if missing:
                raise ValueError(f"frames given without subjects {missing}: give every subject its frame, or none")
        self.out_dim = out_dim
        self.readout_chunk = readout_chunk
        self.conv_blocks = ConvBlocks([s[0] for s in self.layer_shapes], conv_width, out_dim, n_convs, kernel_size)
        self._subjects = [str(s) for s in subject_coords]
        self.necks = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for subject, coords in subject_coords.items():
            key = _module_key(str(subject))
            try:
                neck = TopyNeck(
                    coords,
                    n_layers=len(self.layer_shapes),
                    dim=out_dim,
                    pe_frequencies=pe_frequencies,
                    pe_max_period=pe_max_period,
                    mlp_width=mlp_width,
                    sigma=sigma,
                    retina_mapper=retina_mapper,
                    layer_selector=layer_selector,
                    global_pool=global_pool,
                    frame=None if frames is None else frames[subject],
                )
            except ValueError as err:  # name the subject: a model holds many
                raise ValueError(f"subject {subject!r}: {err}") from err
            self.necks[key] = neck
            self.heads[key] = VoxelHead(self.necks[key].n_voxels, out_dim)

    # -- introspection -------------------------------------------------------------------------------

    @property
    def subjects(self) -> list[str]:
        """Subject names, in the order given to the constructor."""
        return list(self._subjects)

    @property
    def n_layers(self) -> int:
        return len(self.layer_shapes)

    def n_voxels(self, subject: str) -> int:
        return self._neck(subject).n_voxels

    def _neck(self, subject: str) -> TopyNeck:
        if subject not in self._subjects:
            raise KeyError(f"unknown subject {subject!r}; the model has {self._subjects}")
        return self.necks[_module_key(subject)]  # type: ignore[return-value]

    def _head(self, subject: str) -> VoxelHead:
        self._neck(subject)  # same error for an unknown subject
        return self.heads[_module_key(subject)]  # type: ignore[return-value]

    # -- forward -------------------------------------------------------------------------------------

    def core(self, features: Sequence[Tensor]) -> list[Tensor]:
        """ConvBlocks on the cached layers: list of ``[B, C_l, h_l, w_l]`` -> list of ``[B, D, h_l, w_l]``
        (a :class:`CoreOutput`; run once per batch and pass to :meth:`readout` for every subject)."""
        if len(features) != self.n_layers:
            raise ValueError(f"expected {self.n_layers} feature layers, got {len(features)}")
        for l, (f, shape) in enumerate(zip(features, self.layer_shapes)):
            if tuple(f.shape[1:]) != shape:
                raise ValueError(f"layer {l}: expected [B, {shape[0]}, {shape[1]}, {shape[2]}], got {tuple(f.shape)}")
        return CoreOutput(self.conv_blocks(features))

    def readout(self, core_out: Sequence[Tensor], subject: str, voxel_index: Tensor | None = None) -> Tensor:
        """Predictions ``[B, n]`` (float32) of ``subject``'s voxels ``voxel_index`` (None = all) from ``core()``."""
        neck, head = self._neck(subject), self._head(subject)
        if voxel_index is not None:
            voxel_index = voxel_index.to(neck.coords.device, torch.long)
        u = neck.retina(voxel_index, jitter=self.training)
        eta = neck.layer_weights(voxel_index)
        w, b = head.params(voxel_index)
        q = neck.global_features(core_out)
        table = core_out.pixel_table() if isinstance(core_out, CoreOutput) else None
        out = efficient_readout(core_out, u, eta, w, b, global_features=q, chunk=self.readout_chunk, table=table)
        return out.float()

    def forward(self, features: Sequence[Tensor], subject: str, voxel_index: Tensor | None = None) -> Tensor:
        """``core`` then ``readout``: features list of ``[B, C_l, h_l, w_l]`` -> ``[B, n]`` float32."""
        return self.readout(self.core(features), subject, voxel_index)

    # -- per-subject quantities (probing, regularisation, veROI) -------------------------------------

    def retina(self, subject: str, voxel_index: Tensor | None = None) -> Tensor:
        """RetinaMapper output ``u [n, 2]``, never jittered (grid_sample convention: ``u[:, 0]`` = x,
        ``u[:, 1]`` = y; -1 = left/top edge, +1 = right/bottom edge)."""
        return self._neck(subject).retina(self._index(subject, voxel_index), jitter=False)

    def layer_weights(self, subject: str, voxel_index: Tensor | None = None) -> Tensor:
        """LayerSelector output ``eta [n, L]`` as used in forward (rows sum to 1; one-hot for ``"hard"``)."""
        return self._neck(subject).layer_weights(self._index(subject, voxel_index))

    def regularizer(self, subject: str, voxel_index: Tensor | None = None) -> Tensor:
        """Scalar: mean over the voxels of ``sum_l eta log eta`` (<= 0; 0 for ``"uniform"``/``"hard"``).

        A mean over voxels rather than the sum, so ``lambda`` does not depend on how many voxels a step
        samples. The training loss adds ``lambda * regularizer`` (lambda > 0), which raises eta's entropy.
        """
        return self._neck(subject).regularizer(self._index(subject, voxel_index))

    def head_weights(self, subject: str) -> Tensor:
        """Per-voxel head weights ``[N_s, D]`` (detached), the input of veROI clustering."""
        return self._head(subject).weight.detach()

    def _index(self, subject: str, voxel_index: Tensor | None) -> Tensor | None:
        return None if voxel_index is None else voxel_index.to(self._neck(subject).coords.device, torch.long)

    # -- pre-trained neck MLPs (paper 4.6) -----------------------------------------------------------

    def neck_mlp_state(self) -> dict[str, dict[str, dict[str, Tensor]]]:
        """The RetinaMapper / LayerSelector MLP weights of every subject, with the frame they read.

        Returns:
            ``{subject: {"retina_mapper": state_dict, "layer_selector": state_dict, "frame": {"offset": [k],
            "scale": []}}}`` (detached CPU copies; an MLP part is absent where the model has no MLP for it:
            FrozenRM, FrozenLS). ``frame`` is the coordinate rescale whose output the MLPs were trained on.
            ``torch.save``-able.
        """

        def copy(mlp: nn.Module) -> dict[str, Tensor]:
            return {k: v.detach().cpu().clone() for k, v in mlp.state_dict().items()}

        state = {}
        for s in self._subjects:
            neck = self._neck(s)
            state[s] = {part: copy(mlp) for part, mlp in neck.mlps().items()}
            state[s][FRAME_KEY] = neck.frame_rescale()
        return state

    def load_neck_mlps(self, state: Mapping[str, Mapping[str, Mapping[str, Tensor]]], freeze: bool = True) -> None:
        """Load RetinaMapper / LayerSelector MLPs saved by :meth:`neck_mlp_state`, optionally frozen.

        Subject matching: if every subject of this model is in ``state``, each gets its own entry (extra
        entries are ignored); otherwise ``state`` must hold exactly one subject, whose MLPs are copied into
        every subject (paper 4.6: MLPs pre-optimised by a *single-subject* model, loaded for the recipe).
        Every learnable MLP of this model must be in the entry, and the entry may not carry a part this
        model lacks (e.g. loading a RetinaMapper into a FrozenRM model is an error, not a silent no-op).
        With ``freeze``, the loaded parameters get ``requires_grad = False``; build the optimiser from
        ``p for p in model.parameters() if p.requires_grad``.

        Frames: every subject keeps its own coordinate frame (nothing but MLP weights is copied). Loaded per
        subject, the MLPs only mean the same map if this model reads the subject in the frame they were
        trained in, so a frame that differs from the entry's ``frame`` is a ValueError (build both models with
        ``frames=`` from :func:`~afo.model.pe.subject_frame` of all the subject's usable voxels). Shared from
        one subject into all, each subject reads the MLPs in its own frame, as in the paper.
        """
        shared = not all(s in state for s in self._subjects)
        if not shared:
            source = {s: state[s] for s in self._subjects}
        elif len(state) == 1:
            (only,) = state.values()
            source = {s: only for s in self._subjects}
        else:
            missing = [s for s in self._subjects if s not in state]
            raise KeyError(f"neck MLP state lacks subjects {missing} and holds {len(state)} (not one to share)")
        for subject, entry in source.items():
            neck = self._neck(subject)
            parts = {k: v for k, v in entry.items() if k != FRAME_KEY}
            mlps = neck.mlps()
            if set(parts) != set(mlps):
                raise ValueError(f"subject {subject!r}: state has MLPs {sorted(parts)}, model has {sorted(mlps)}")
            if not shared and FRAME_KEY in entry:
                _check_same_frame(subject, entry[FRAME_KEY], neck.frame_rescale())
            for part, mlp in mlps.items():
                mlp.load_state_dict(parts[part])
                if freeze:
                    mlp.requires_grad_(False)


def _check_same_frame(subject: str, source: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> None:
    """ValueError unless the source MLPs' frame rescale equals this model's (float32 round-off aside)."""
    same = all(
        torch.allclose(torch.as_tensor(source[k], dtype=torch.float32), target[k], rtol=1e-6, atol=1e-6)
        for k in ("offset", "scale")
    )
    if not same:
        raise ValueError(
            f"subject {subject!r}: the loaded MLPs were trained in the coordinate frame offset "
            f"{torch.as_tensor(source['offset']).tolist()}, scale {float(source['scale']):.6g}, this model reads it "
            f"in offset {target['offset'].tolist()}, scale {float(target['scale']):.6g}; their retinotopy would be "
            "scrambled. Build every model of the subject with frames= from subject_frame(all its usable voxels)"
        )
