"""Backbone weights in the layouts users have them (afo.backbone_weights), on tiny DINOv2-family ViTs.

Each layout is written from a tiny timm ``vit_small_patch14_dinov2`` (2 blocks, width 48) by the published
naming of its source: the facebookresearch/dinov2 ``DinoVisionTransformer`` attributes (``cls_token``,
``pos_embed`` with the class token's row, ``mask_token [1, D]``, ``register_tokens``, ``blocks.i.*``, ``norm``)
and transformers' ``Dinov2Model`` (the renames and q/k/v split of its ``convert_dinov2_to_hf.py``).
Loading must give back exactly the source's weights and outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from afo.backbone_weights import BackboneWeightsError, huggingface_to_dinov2, load_backbone_weights, weights_layout
from afo.errors import UserError
from afo.features import BackboneSpec, create_backbone

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3}
RES = 28  # 2 x 2 patches of 14 px


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _source(name: str = "vit_small_patch14_dinov2", img_size: int = RES, seed: int = 3) -> torch.nn.Module:
    """A tiny model with every weight random (layer scales included), so a wrong mapping changes outputs."""
    torch.manual_seed(seed)
    model = timm.create_model(name, img_size=img_size, num_classes=0, **TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def _timm_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _dinov2_hub_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The torch.hub checkpoint of the same weights: block names as timm's, plus the mask token; with
    registers, ``pos_embed`` keeps the class token's row and ``register_tokens`` holds the registers."""
    state = _timm_layout(model)
    dim = state["cls_token"].shape[-1]
    state["mask_token"] = torch.randn(1, dim)
    if "reg_token" in state:
        cls_row = torch.randn(1, 1, dim)  # the hub adds it to the class token; timm folds it in
        state["register_tokens"] = state.pop("reg_token")
        state["pos_embed"] = torch.cat([cls_row, state["pos_embed"]], dim=1)
        state["cls_token"] = state["cls_token"] - cls_row
    return state


def _huggingface_layout(model: torch.nn.Module, prefix: str = "", v5: bool = False) -> dict[str, torch.Tensor]:
    """transformers' Dinov2Model / Dinov2WithRegistersModel names for the hub checkpoint's weights: as in the
    files on the Hub (transformers 4), or as transformers >= 5 saves them (``v5``: q/k/v/o_proj)."""
    hub = _dinov2_hub_layout(model)
    dim = hub["cls_token"].shape[-1]
    out = {
        "embeddings.cls_token": hub.pop("cls_token"),
        "embeddings.mask_token": hub.pop("mask_token"),
        "embeddings.position_embeddings": hub.pop("pos_embed"),
        "embeddings.patch_embeddings.projection.weight": hub.pop("patch_embed.proj.weight"),
        "embeddings.patch_embeddings.projection.bias": hub.pop("patch_embed.proj.bias"),
        "layernorm.weight": hub.pop("norm.weight"),
        "layernorm.bias": hub.pop("norm.bias"),
    }
    if "register_tokens" in hub:
        out["embeddings.register_tokens"] = hub.pop("register_tokens")
    for i in range(TINY["depth"]):
        b, e = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = hub.pop(f"{b}attn.qkv.{kind}").split(dim, dim=0)
            names = (
                ("q_proj", "k_proj", "v_proj", "o_proj")
                if v5
                else ("attention.query", "attention.key", "attention.value", "output.dense")
            )
            for name, w in zip(names, (q, k, v, hub.pop(f"{b}attn.proj.{kind}"))):
                out[f"{e}attention.{name}.{kind}"] = w
            for n in ("norm1", "norm2"):
                out[f"{e}{n}.{kind}"] = hub.pop(f"{b}{n}.{kind}")
            for fc in ("fc1", "fc2"):
                out[f"{e}mlp.{fc}.{kind}"] = hub.pop(f"{b}mlp.{fc}.{kind}")
        out[f"{e}layer_scale1.lambda1"] = hub.pop(f"{b}ls1.gamma")
        out[f"{e}layer_scale2.lambda1"] = hub.pop(f"{b}ls2.gamma")
    assert not hub, f"unmapped hub keys {sorted(hub)}"
    return {prefix + k: v for k, v in out.items()}


def _write(state: dict[str, torch.Tensor], path) -> str:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


def _spec(path: str, name: str = "vit_small_patch14_dinov2", resolution: int = RES) -> BackboneSpec:
    return BackboneSpec(name, layers=(0, 1), resolution=resolution, pretrained_path=path, model_kwargs=dict(TINY))


def _assert_same(model: torch.nn.Module, source: torch.nn.Module) -> None:
    got, want = model.state_dict(), source.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k)
    x = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True, output_fmt="NCHW")
        b = source.forward_intermediates(x, indices=[0, 1], intermediates_only=True, output_fmt="NCHW")
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


LAYOUTS = [
    ("timm", _timm_layout, "w.pth"),
    ("timm", _timm_layout, "model.safetensors"),
    ("dinov2-hub", _dinov2_hub_layout, "dinov2_vits14_pretrain.pth"),
    ("huggingface", _huggingface_layout, "model.safetensors"),
    ("huggingface", lambda m: _huggingface_layout(m, prefix="dinov2."), "classifier.safetensors"),
    ("huggingface", lambda m: _huggingface_layout(m, v5=True), "transformers5.safetensors"),
]


@pytest.mark.parametrize(("layout", "writer", "filename"), LAYOUTS, ids=[f"{l[0]}-{l[2]}" for l in LAYOUTS])
def test_each_layout_loads_the_same_weights(tmp_path, layout, writer, filename):
    source = _source()
    state = writer(source)
    assert weights_layout(state) == layout
    model = create_backbone(_spec(_write(state, tmp_path / filename)))
    _assert_same(model, source)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("writer", [_dinov2_hub_layout, _huggingface_layout], ids=["dinov2-hub", "huggingface"])
def test_register_variant(tmp_path, writer):
    """DINOv2 with registers: the hub's class-token row of pos_embed is folded into timm's cls_token."""
    name = "vit_small_patch14_reg4_dinov2"
    source = _source(name)
    model = create_backbone(_spec(_write(writer(source), tmp_path / "w.pth"), name=name))
    _assert_same(model, source)


def _swiglu_hub(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """ViT-g's hub checkpoint names its packed SwiGLU MLP ``w12`` (rows: gate, then up) and ``w3``."""
    state = _dinov2_hub_layout(model)
    return {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v for k, v in state.items()}


def _swiglu_huggingface(model: torch.nn.Module, v5: bool) -> dict[str, torch.Tensor]:
    """transformers 4: ``mlp.weights_in``/``weights_out``; transformers 5: ``gate_proj``, ``up_proj``, ``down_proj``."""
    state = _huggingface_layout(model)
    out = {}
    for k, v in state.items():
        if ".mlp.fc1." in k and v5:
            gate, up = v.chunk(2, dim=0)
            out[k.replace("mlp.fc1", "mlp.gate_proj")], out[k.replace("mlp.fc1", "mlp.up_proj")] = gate, up
        elif ".mlp.fc1." in k:
            out[k.replace("mlp.fc1", "mlp.weights_in")] = v
        else:
            out[k.replace("mlp.fc2", "mlp.down_proj" if v5 else "mlp.weights_out")] = v
    return out


@pytest.mark.parametrize(
    "writer",
    [_swiglu_hub, lambda m: _swiglu_huggingface(m, v5=False), lambda m: _swiglu_huggingface(m, v5=True)],
    ids=["dinov2-hub", "huggingface-4", "huggingface-5"],
)
def test_swiglu_variant(tmp_path, writer):
    name = "vit_giant_patch14_dinov2"
    source = _source(name)
    model = create_backbone(_spec(_write(writer(source), tmp_path / "w.pth"), name=name))
    _assert_same(model, source)


def test_position_embedding_resampled_to_the_configured_resolution(tmp_path):
    """The hub weights are for 518 px (37 x 37 patches); a model built at another resolution gets the
    position embedding resampled as timm does for its own weights, whatever the layout of the file."""
    source = _source(img_size=56)  # 4 x 4 patches
    hub = create_backbone(_spec(_write(_dinov2_hub_layout(source), tmp_path / "hub.pth")))
    hf = create_backbone(_spec(_write(_huggingface_layout(source), tmp_path / "hf.safetensors")))
    expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=(2, 2), num_prefix_tokens=1)
    torch.testing.assert_close(hub.pos_embed, expected)
    torch.testing.assert_close(hf.pos_embed, expected)
    torch.testing.assert_close(hub.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)


def test_huggingface_classifier_head_is_dropped():
    state = _huggingface_layout(_source(), prefix="dinov2.")
    state["classifier.weight"] = torch.zeros(10, 96)
    renamed = huggingface_to_dinov2(state)
    assert "classifier.weight" not in renamed and "blocks.0.attn.qkv.weight" in renamed
    assert renamed["blocks.0.attn.qkv.weight"].shape == (3 * 48, 48)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = _timm_layout(_source())
    del state["blocks.1.attn.qkv.weight"]
    state["blocks.7.attn.qkv.weight"] = torch.zeros(3)
    path = _write(state, tmp_path / "broken.pth")
    with pytest.raises(BackboneWeightsError) as err:
        create_backbone(_spec(path))
    message = str(err.value)
    assert "broken.pth" in message and "timm layout" in message
    assert "missing keys [blocks.1.attn.qkv.weight]" in message
    assert "unexpected keys [blocks.7.attn.qkv.weight]" in message
    assert isinstance(err.value, UserError)


def test_weights_of_another_size_are_named(tmp_path):
    """ViT-S weights configured as a narrower model: the error lists the keys of another shape."""
    path = _write(_dinov2_hub_layout(_source()), tmp_path / "vits.pth")
    narrow = BackboneSpec(
        "vit_small_patch14_dinov2",
        layers=(0,),
        resolution=RES,
        pretrained_path=path,
        model_kwargs={"depth": 2, "embed_dim": 24, "num_heads": 3},
    )
    with pytest.raises(
        BackboneWeightsError, match=r"vits\.pth \(dinov2-hub layout\).*other shapes \[.*\(model \(1, 1, 24\)\)"
    ):
        create_backbone(narrow)


def test_unreadable_files_are_user_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(BackboneWeightsError, match="notes.txt is neither"):
        load_backbone_weights(_source(), tmp_path / "notes.txt")
    torch.save({"epoch": 3, "model": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(BackboneWeightsError, match="odd.pth: entries that are not tensors"):
        load_backbone_weights(_source(), tmp_path / "odd.pth")
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        load_backbone_weights(_source(), tmp_path / "nope.pth")
    good = _write(_timm_layout(_source()), tmp_path / "cut.safetensors")
    Path(good).write_bytes(Path(good).read_bytes()[:-100])  # a download that stopped early
    with pytest.raises(BackboneWeightsError, match="cut.safetensors is a damaged safetensors file"):
        load_backbone_weights(_source(), good)
    hf = _huggingface_layout(_source())
    del hf["encoder.layer.1.attention.attention.key.bias"]
    with pytest.raises(
        BackboneWeightsError, match=r"hf.safetensors: blocks.1.attn.qkv.bias needs .*'key'.*only \['query', 'value'\]"
    ):
        load_backbone_weights(_source(), _write(hf, tmp_path / "hf.safetensors"))


def test_wrapped_training_checkpoint(tmp_path):
    """``{"model": state_dict}`` (a training checkpoint) is unwrapped."""
    source = _source()
    torch.save({"model": _dinov2_hub_layout(source)}, tmp_path / "ckpt.pth")
    assert (
        load_backbone_weights(
            timm.create_model("vit_small_patch14_dinov2", img_size=RES, num_classes=0, **TINY), tmp_path / "ckpt.pth"
        )
        == "dinov2-hub"
    )
