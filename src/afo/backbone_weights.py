"""Backbone weights from a local file, in the layouts users have them.

The paper's backbone is DINOv2 ViT-B/14 (timm ``vit_base_patch14_dinov2.lvd142m``). Its weights circulate as:

- ``timm``: the timm model's own state dict (``.pth`` or ``.safetensors``, e.g. the Hugging Face Hub repo
  ``timm/vit_base_patch14_dinov2.lvd142m``): keys as in ``model.state_dict()``.
- ``dinov2-hub``: the facebookresearch/dinov2 torch.hub checkpoint (``dinov2_vitb14_pretrain.pth``): the same
  block names as timm, plus ``mask_token`` (and ``register_tokens`` in the ``_reg4`` variants), ``pos_embed`` over
  the 37 x 37 grid of 518 px inputs, and SwiGLU MLPs named ``w12``/``w3`` (ViT-g).
- ``huggingface``: transformers' ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (``model.safetensors``), keys like
  ``embeddings.patch_embeddings.projection.weight`` and ``encoder.layer.0.attention.attention.query.weight``
  (the files on the Hub; transformers >= 5 saves ``encoder.layer.0.attention.q_proj.weight`` and, for SwiGLU,
  ``mlp.gate_proj``/``up_proj``/``down_proj``; both are read), prefixed ``dinov2.`` / ``dinov2_with_registers.``
  when saved from an image-classification model.

A Hugging Face state dict is first renamed to the dinov2-hub layout (the inverse of transformers'
``convert_dinov2_to_hf.py``: q, k, v concatenated back into ``qkv``); then timm's own ``checkpoint_filter_fn`` of
the model's family turns dinov2-hub keys into timm's (register tokens, SwiGLU names) and resamples the position
embedding to the model's token grid, as timm does for its own pretrained weights. What still does not fit the
model is an error that names the file and the keys.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from afo.errors import UserError

LAYOUTS = ("timm", "dinov2-hub", "huggingface")
# Prefixes of transformers' task models around the backbone (e.g. Dinov2ForImageClassification.dinov2).
HF_PREFIXES = ("dinov2.", "dinov2_with_registers.")
HF_CLASSIFIER_PREFIX = "classifier."
_SHOWN_KEYS = 8  # keys listed in an error message; the rest are counted

# Hugging Face name -> dinov2-hub name, for every key that is a plain rename ({i} = block index). Both
# transformers' names: up to version 4 (the files on the Hub) and from version 5 (what it saves now).
_HF_RENAMES = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.mask_token", "mask_token"),
    (r"embeddings\.register_tokens", "register_tokens"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"encoder\.layer\.(\d+)\.mlp\.weights_in\.(weight|bias)", r"blocks.\1.mlp.w12.\2"),
    (r"encoder\.layer\.(\d+)\.mlp\.(?:weights_out|down_proj)\.(weight|bias)", r"blocks.\1.mlp.w3.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
)
# Keys that transformers splits and dinov2 holds as one matrix: (pattern with groups block, part, kind;
# the dinov2-hub key; the parts in the order of their rows). SwiGLU: w12 = [gate; up] (dinov2 chunks it so).
_HF_CONCATS = (
    (
        re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)"),
        "blocks.{}.attn.qkv.{}",
        ("query", "key", "value"),
    ),
    (
        re.compile(r"encoder\.layer\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)"),
        "blocks.{}.attn.qkv.{}",
        ("q", "k", "v"),
    ),
    (re.compile(r"encoder\.layer\.(\d+)\.mlp\.(gate|up)_proj\.(weight|bias)"), "blocks.{}.mlp.w12.{}", ("gate", "up")),
)


class BackboneWeightsError(UserError):
    """A backbone weights file that cannot be read or does not fit the configured backbone."""


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict in a ``.safetensors`` or PyTorch file (told apart by content, not by name).

    A PyTorch file may wrap the state dict as ``{"model": ...}`` or ``{"state_dict": ...}`` (training
    checkpoints); it is read with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(
            f"backbone.pretrained_path: {path} does not exist; name a local weights file or set it to null"
        )
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    if len(head) == 9 and head[8:9] == b"{":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise BackboneWeightsError(
                f"backbone.pretrained_path: {path} is a damaged safetensors file ({err})"
            ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
    ) as err:  # torch.load's errors for a file that is no checkpoint
        raise BackboneWeightsError(
            f"backbone.pretrained_path: {path} is neither a safetensors file nor a PyTorch state dict that loads with "
            f"weights_only=True ({str(err).splitlines()[0]})"
        ) from err
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise BackboneWeightsError(f"backbone.pretrained_path: {path} holds no state dict (a {type(obj).__name__})")
    other = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if other:
        raise BackboneWeightsError(
            f"backbone.pretrained_path: {path}: entries that are not tensors: {_show(other)}; save model.state_dict()"
        )
    return dict(obj)


def weights_layout(state: Mapping[str, Tensor]) -> str:
    """``"huggingface"``, ``"dinov2-hub"`` or ``"timm"`` (see the module docstring)."""
    if any(_strip_hf_prefix(k).startswith("embeddings.patch_embeddings.") for k in state):
        return "huggingface"
    if "mask_token" in state:  # the DINOv2 training-time mask token: only the hub checkpoints keep it
        return "dinov2-hub"
    return "timm"


def huggingface_to_dinov2(state: Mapping[str, Tensor], source: str | os.PathLike = "the weights") -> dict[str, Tensor]:
    """Rename a transformers ``Dinov2Model`` state dict (version 4 or 5 names) to the facebookresearch/dinov2 layout.

    The image-classification head (``classifier.*``) is dropped: the backbone is used without it. Keys
    that match no rule are kept as they are, so they show up as unexpected when loaded. ``source`` (the
    file) names where an incomplete q/k/v (or SwiGLU) set came from in the error.
    """
    out: dict[str, Tensor] = {}
    split: dict[str, tuple[tuple[str, ...], dict[str, Tensor]]] = {}  # dinov2 key -> (part order, parts)
    for key, value in state.items():
        if key.startswith(HF_CLASSIFIER_PREFIX):
            continue
        key = _strip_hf_prefix(key)
        concat = next(((c, m) for c in _HF_CONCATS if (m := c[0].fullmatch(key))), None)
        if concat:
            (_, target, order), match = concat
            block, part, kind = match.groups()
            split.setdefault(target.format(block, kind), (order, {}))[1][part] = value
            continue
        for pattern, replacement in _HF_RENAMES:
            new, n = re.subn(f"^{pattern}$", replacement, key)
            if n:
                key = new
                break
        out[key] = value
    for target, (order, parts) in split.items():
        if set(parts) != set(order):
            raise BackboneWeightsError(
                f"backbone.pretrained_path: {source}: {target} needs the Hugging Face parts {list(order)}, "
                f"the file has only {sorted(parts)}; it is incomplete"
            )
        out[target] = torch.cat([parts[p] for p in order], dim=0)
    return out


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> str:
    """Load a weights file of any of :data:`LAYOUTS` into a timm ``model``; returns the layout found.

    Raises:
        BackboneWeightsError: the file is missing or unreadable, or its weights do not fit the model
            (keys missing or unexpected, or shapes that differ), naming the file and the keys.
    """
    state = read_weights(path)
    layout = weights_layout(state)
    if layout == "huggingface":
        state = huggingface_to_dinov2(state, path)
    family_filter = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if family_filter is not None:
        state = family_filter(state, model)
    state = _without_unused_classifier(state, model)
    _check_fits(state, model, path, layout)
    model.load_state_dict(state, strict=True)
    return layout


def _strip_hf_prefix(key: str) -> str:
    for prefix in HF_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _without_unused_classifier(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Drop classifier weights the model has no place for (it is built with ``num_classes=0``): a backbone
    whose file came with an ImageNet head still loads, and the head is never used for features."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    prefixes = tuple(f"{n}." for n in ((names,) if isinstance(names, str) else names))
    expected = model.state_dict()
    return {k: v for k, v in state.items() if k in expected or not (prefixes and k.startswith(prefixes))}


def _check_fits(state: Mapping[str, Tensor], model: nn.Module, path: str | os.PathLike, layout: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    problems = []
    if missing:
        problems.append(f"missing keys {_show(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_show(unexpected)}")
    if shapes:
        problems.append(f"other shapes {_show(shapes)}")
    raise BackboneWeightsError(
        f"backbone.pretrained_path: {path} ({layout} layout) does not fit the configured backbone "
        f"{type(model).__name__}: {'; '.join(problems)}. Check that backbone.name and backbone.model_kwargs "
        "describe the model these weights belong to"
    )


def _show(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    return f"[{shown}{f', ... {len(items) - _SHOWN_KEYS} more' if len(items) > _SHOWN_KEYS else ''}]"
