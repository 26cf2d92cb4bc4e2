"""Frozen-backbone features, computed once per dataset and cached for every later job.

Cache layout (HDF5, one file per dataset and backbone)::

    /layer_<k>    float16 [n_images, C_k, h_k, w_k]   k = 0..L-1 in the order of ``layers`` (0 = shallowest)
    attrs:        backbone, layers (json), resolution, pretrained_source, store (path), n_images, format_version

Row i of every layer is image i of the prepared store. float16 halves the disk and page-cache footprint;
models cast to float32 (or autocast) when they read it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from afo.backbone_weights import load_backbone_weights
from afo.data.store import PreparedStore
from afo.io import CorruptFileError, MissingFileError, reading_hdf5

FEATURES_FORMAT_VERSION = 1
REBUILD = "rerun the workflow's features rule (or `afo features`)"
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class BackboneSpec:
    """Which frozen backbone, which of its layers, at which input resolution.

    ``pretrained_path`` names a local weights file and wins over ``pretrained`` (timm's own download, which
    needs internet). Neither: random initialisation. The file may be a timm state dict, a DINOv2 torch.hub
    checkpoint or a Hugging Face ``Dinov2Model`` state dict, ``.pth`` or ``.safetensors``
    (see :mod:`afo.backbone_weights`).
    """

    name: str
    layers: tuple[int, ...]
    resolution: int
    pretrained: bool = False
    pretrained_path: str | None = None
    model_kwargs: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: dict) -> BackboneSpec:
        return cls(
            name=cfg["name"],
            layers=tuple(int(i) for i in cfg["layers"]),
            resolution=int(cfg["resolution"]),
            pretrained=bool(cfg.get("pretrained", False)),
            pretrained_path=cfg.get("pretrained_path") or None,
            model_kwargs=dict(cfg.get("model_kwargs") or {}),
        )

    @property
    def pretrained_source(self) -> str:
        if self.pretrained_path:
            return f"file:{self.pretrained_path}"
        return "timm" if self.pretrained else "random-init"


def create_backbone(spec: BackboneSpec) -> torch.nn.Module:
    """The timm model in eval mode with every parameter frozen.

    Models that take an ``img_size`` argument (ViTs) are built at ``spec.resolution`` so their token grid
    matches it (timm resamples position embeddings of pretrained weights); others (CNNs) take any size.
    """
    import timm

    kwargs = dict(spec.model_kwargs)
    kwargs.setdefault("num_classes", 0)
    # A local file is loaded below, after the model is built (timm would only read its own layout).
    kwargs["pretrained"] = spec.pretrained and not spec.pretrained_path
    # Random-init weights (the demo) come from a fixed seed, so a cache is the same on every run and machine;
    # the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        try:
            model = timm.create_model(spec.name, img_size=spec.resolution, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            model = timm.create_model(spec.name, **kwargs)
    if spec.pretrained_path:
        load_backbone_weights(model, spec.pretrained_path)
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(f"backbone.name: timm model {spec.name!r} has no forward_intermediates; choose another family")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _normalisation(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32).view(1, 3, 1, 1)
    return mean, std


@torch.no_grad()
def backbone_features(model: torch.nn.Module, images: np.ndarray, spec: BackboneSpec, device: torch.device) -> list[torch.Tensor]:
    """images uint8 [B, H, W, 3] -> list over ``spec.layers`` of float [B, C_k, h_k, w_k]."""
    mean, std = _normalisation(model)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != spec.resolution or x.shape[-2] != spec.resolution:
        x = F.interpolate(x, size=(spec.resolution, spec.resolution), mode="bicubic", align_corners=False).clamp_(0, 1)
    x = (x - mean.to(device)) / std.to(device)
    out = model.forward_intermediates(x, indices=list(spec.layers), intermediates_only=True, output_fmt="NCHW")
    return list(out)


def extract_features(
    store_path: str | os.PathLike,
    out_path: str | os.PathLike,
    spec: BackboneSpec,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> dict:
    """Run the frozen backbone over every image of a prepared store and cache the chosen layers (float16).

    Written to ``<out>.tmp`` and renamed at the end, so a killed job leaves no cache that looks complete.
    """
    device = torch.device(device)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    model = create_backbone(spec).to(device)
    with PreparedStore(store_path) as store, h5py.File(tmp, "w") as cache:
        n = store.n_images
        datasets: list[h5py.Dataset] = []
        bar = tqdm(total=n, desc=f"{store.name}: {spec.name} features", unit="img", file=sys.stderr, disable=None)
        for start in range(0, n, batch_size):
            feats = backbone_features(model, store.images(slice(start, start + batch_size)), spec, device)
            if not datasets:
                for k, f in enumerate(feats):
                    shape = (n, *f.shape[1:])
                    datasets.append(cache.create_dataset(f"layer_{k}", shape=shape, dtype=np.float16, chunks=(1, *f.shape[1:])))
            for ds, f in zip(datasets, feats):
                ds[start : start + f.shape[0]] = f.to(torch.float16).cpu().numpy()
            bar.update(feats[0].shape[0])
        bar.close()
        cache.attrs.update(
            backbone=spec.name,
            layers=json.dumps(list(spec.layers)),
            resolution=spec.resolution,
            pretrained_source=spec.pretrained_source,
            model_kwargs=json.dumps(spec.model_kwargs, sort_keys=True),
            store=str(store_path),
            n_images=n,
            format_version=FEATURES_FORMAT_VERSION,
        )
        shapes = [tuple(ds.shape[1:]) for ds in datasets]
    os.replace(tmp, out_path)
    return {"n_images": n, "layer_shapes": shapes, "backbone": spec.name, "pretrained_source": spec.pretrained_source}


class FeatureCache:
    """Read access to a feature cache; :meth:`load` pulls it into memory for fast random batches."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingFileError(f"{self.path}: no feature cache; {REBUILD}")
        with reading_hdf5(self.path, "feature cache", REBUILD), h5py.File(self.path, "r") as f:
            if int(f.attrs.get("format_version", -1)) != FEATURES_FORMAT_VERSION:
                raise CorruptFileError(f"{self.path}: feature cache of another format version; delete it and {REBUILD}")
            n_layers = sum(1 for k in f if k.startswith("layer_"))
            self.layer_shapes: list[tuple[int, int, int]] = [tuple(f[f"layer_{k}"].shape[1:]) for k in range(n_layers)]
            self.n_images = int(f.attrs["n_images"])
            self.backbone = str(f.attrs["backbone"])
            self.layers = json.loads(f.attrs["layers"])

    def load(self, index: Sequence[int] | np.ndarray | None = None) -> list[torch.Tensor]:
        """float16 tensors [n, C_k, h_k, w_k] per layer for the given image rows (all when None)."""
        with reading_hdf5(self.path, "feature cache", REBUILD), h5py.File(self.path, "r") as f:
            if index is None:
                return [torch.from_numpy(f[f"layer_{k}"][:]) for k in range(len(self.layer_shapes))]
            index = np.asarray(index)
            order = np.argsort(index)
            inverse = np.empty_like(order)
            inverse[order] = np.arange(order.size)
            uniq, uniq_inv = np.unique(index[order], return_inverse=True)
            out = []
            for k in range(len(self.layer_shapes)):
                block = f[f"layer_{k}"][uniq]  # h5py wants increasing, unique indices
                out.append(torch.from_numpy(block[uniq_inv][inverse]))
            return out
