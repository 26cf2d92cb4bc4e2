"""Frozen-backbone features: computed once per dataset and cached for every later job (``backbone.cache: disk``),
or computed inside each batch from the store's images (``backbone.cache: none``).

Cache layout (HDF5, one file per dataset and backbone)::

    /layer_<k>    float16 [n_images, C_k, h_k, w_k]   k = 0..L-1 in the order of ``layers`` (0 = shallowest)
    attrs:        backbone, layers (json), resolution, pretrained_source, store (path), n_images, format_version

Row i of every layer is image i of the prepared store, one HDF5 chunk per image and layer, uncompressed: jobs
read the rows of a batch from a memory map (:mod:`afo.io.rows`), never the whole cache. float16 halves the disk and
page-cache footprint; models cast to float32 (or autocast) when they read it.

A job reads features through a *feature source*: :class:`FeatureBank` (the caches) or :class:`OnTheFlyFeatures`
(the stores' uint8 images and the frozen backbone). ``source.get(dataset, rows)`` gives a batch's inputs (read in
DataLoader workers); ``source.features(inputs)`` turns them into the layers [B, C_k, h_k, w_k] float16 on the
inputs' device (the identity for the caches, the backbone for on the fly). Both give the same numbers up to the
backbone's floating-point noise between batch compositions and devices.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from afo.backbone_weights import load_backbone_weights
from afo.data.store import PreparedStore
from afo.errors import UserError
from afo.io import CorruptFileError, MissingFileError, atomic_path, reading_hdf5
from afo.io.rows import RowReader

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
def backbone_features(
    model: torch.nn.Module, images: np.ndarray | torch.Tensor, spec: BackboneSpec, device: torch.device
) -> list[torch.Tensor]:
    """images uint8 [B, H, W, 3] (array, or tensor on any device) -> list over ``spec.layers`` of float [B, C_k, h_k, w_k]."""
    mean, std = _normalisation(model)
    if not isinstance(images, torch.Tensor):
        images = torch.from_numpy(np.ascontiguousarray(images))
    # Contiguous NCHW: the permuted view is channels-last, which the CPU convolutions run about 25 % slower.
    x = images.to(device).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
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

    Written to a temporary sibling and renamed at the end (:func:`afo.io.atomic_path`), so a killed job leaves no
    cache that looks complete.
    """
    device = torch.device(device)
    model = create_backbone(spec).to(device)
    with atomic_path(out_path) as tmp, PreparedStore(store_path) as store, h5py.File(tmp, "w") as cache:
        n = store.n_images
        datasets: list[h5py.Dataset] = []
        bar = tqdm(total=n, desc=f"{store.name}: {spec.name} features", unit="img", file=sys.stderr, disable=None)
        for start in range(0, n, batch_size):
            feats = backbone_features(model, store.images(slice(start, start + batch_size)), spec, device)
            if not datasets:
                for k, f in enumerate(feats):
                    shape = (n, *f.shape[1:])
                    datasets.append(
                        cache.create_dataset(f"layer_{k}", shape=shape, dtype=np.float16, chunks=(1, *f.shape[1:]))
                    )
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
    return {"n_images": n, "layer_shapes": shapes, "backbone": spec.name, "pretrained_source": spec.pretrained_source}


class FeatureCache:
    """A feature cache's description; :meth:`readers` read its rows per batch, :meth:`load` some rows at once."""

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

    def readers(self) -> list[RowReader]:
        """One row reader per layer (picklable; each process maps the file on first use)."""
        return [RowReader(self.path, f"layer_{k}", "feature cache", REBUILD) for k in range(len(self.layer_shapes))]

    def load(self, index: Sequence[int] | np.ndarray | None = None) -> list[torch.Tensor]:
        """float16 tensors [n, C_k, h_k, w_k] per layer for the given image rows (all when None: small caches only)."""
        rows = np.arange(self.n_images) if index is None else np.asarray(index)
        out = []
        for reader in self.readers():
            out.append(torch.from_numpy(reader.read(rows)))
            reader.close()
        return out


class FeatureSourceError(UserError):
    """The feature caches or stores of a job do not describe one backbone."""


class FeatureBank:
    """``backbone.cache: disk``: the feature caches of a job's datasets, read per batch (see the module docstring)."""

    def __init__(self, caches: Mapping[str, str | os.PathLike]):
        self.readers: dict[str, list[RowReader]] = {}
        shapes = None
        for dataset, path in sorted(caches.items()):
            cache = FeatureCache(path)
            if shapes is not None and cache.layer_shapes != shapes:
                raise FeatureSourceError(
                    f"{path}: layer shapes {cache.layer_shapes} differ from other datasets' {shapes}; use one backbone spec"
                )
            shapes = cache.layer_shapes
            self.readers[dataset] = cache.readers()
        self.layer_shapes: list[tuple[int, int, int]] = shapes or []

    def get(self, dataset: str, rows: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        """float16 [len(rows), C_k, h_k, w_k] per layer, read from the cache."""
        rows = np.asarray(rows, dtype=np.int64)
        return [torch.from_numpy(r.read(rows)) for r in self.readers[dataset]]

    def features(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return inputs

    def close(self) -> None:
        for readers in self.readers.values():
            for r in readers:
                r.close()


class OnTheFlyFeatures:
    """``backbone.cache: none``: the stores' uint8 images read per batch, the frozen backbone run on their device.

    The backbone is built on first use in the process that computes features (the trainer's, on the GPU when
    there is one), never in DataLoader workers, which only read images.
    """

    def __init__(self, stores: Mapping[str, str | os.PathLike], spec: BackboneSpec):
        self.spec = spec
        self.readers: dict[str, RowReader] = {}
        sizes = set()
        for dataset, path in sorted(stores.items()):
            with PreparedStore(path) as store:
                self.readers[dataset] = store.image_reader()
                sizes.add(store.image_size)
        self._model: torch.nn.Module | None = None
        # One image through the backbone gives the layer shapes the model is built for.
        probe = torch.zeros(
            (1, max(sizes) if sizes else spec.resolution, max(sizes) if sizes else spec.resolution, 3),
            dtype=torch.uint8,
        )
        self.layer_shapes: list[tuple[int, int, int]] = [tuple(f.shape[1:]) for f in self.features([probe])]

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "readers": self.readers, "layer_shapes": self.layer_shapes, "_model": None}

    def get(self, dataset: str, rows: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        """[uint8 images [len(rows), S, S, 3]]: the batch's input to :meth:`features`."""
        return [torch.from_numpy(self.readers[dataset].read(np.asarray(rows, dtype=np.int64)))]

    def features(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """float16 layers [B, C_k, h_k, w_k] on the images' device (float16 as in a cache: the same model input)."""
        (images,) = inputs
        if self._model is None:
            self._model = create_backbone(self.spec)
        self._model.to(images.device)
        return [f.to(torch.float16) for f in backbone_features(self._model, images, self.spec, images.device)]

    def close(self) -> None:
        for r in self.readers.values():
            r.close()


#: Where a job's features come from: the disk caches or the backbone on the fly (same interface).
FeatureSource = FeatureBank | OnTheFlyFeatures


def feature_source(
    stores: Mapping[str, str | os.PathLike], caches: Mapping[str, str | os.PathLike], backbone: Mapping | None = None
) -> FeatureSource:
    """The feature source of a job: the caches (``backbone.cache: disk``) or the backbone on the fly (``none``).

    ``backbone`` is the config's ``backbone`` section; on the fly when its ``cache`` is ``none``.
    """
    if backbone is not None and backbone.get("cache", "disk") == "none":
        return OnTheFlyFeatures(stores, BackboneSpec.from_config(dict(backbone)))
    missing = sorted(set(stores) - set(caches))
    if missing:
        raise FeatureSourceError(
            f"no feature cache for dataset(s) {missing}: give their caches, or set backbone.cache: none"
        )
    return FeatureBank({d: caches[d] for d in stores})
