"""Model files: the typed model configuration and the payload of ``model.pt``.

A model file holds everything needed to run a trained model on raw images, in types that
``torch.load(..., weights_only=True)`` accepts: the model configuration, the feature layer shapes, per-subject
coordinates and voxel indices, the state dict, how it was made (validation score, soup members) and, from
version 2, where its inputs came from: the frozen backbone (:class:`BackboneRecord`: timm name, tapped layers,
resolution, model_kwargs, weights source and the SHA-256 of a local weights file), the image preprocessing
(:class:`Preprocessing`), each subject's dataset, modality, ROI labels and volume geometry
(:class:`SubjectRecord`) and the afo version that wrote it.

On disk it is a plain dict (keys ``format, version, layer_shapes, model_args, subject_coords, voxels,
state_dict, info, sha256`` and, from version 2, ``backbone, preprocessing, subjects, afo_version``);
:class:`ModelFile` is its typed view. Version-1 files still load; they lack the version-2 records
(:meth:`ModelFile.require_inputs` says so in one line).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch

from afo.errors import UserError
from afo.io import atomic_path, file_sha256
from afo.model import EncodingModel, model_defaults

if TYPE_CHECKING:
    from afo.features import BackboneSpec

MODEL_FORMAT = "afo-encoding-model"
# 2: backbone, preprocessing, subjects, afo_version (a self-contained file); 3: the checksum covers every entry
# (settings, records, subjects), not only the weights and voxel indices, and subjects record their dataset's voxel count
MODEL_VERSION = 3
FEATURE_DTYPE = "float16"  # the workflow caches backbone features in float16 (afo.features) and the model reads them so
REBUILD = "rerun the workflow rule that trains it (snakemake rebuilds a missing model.pt from the job's work/ folder)"


class ModelFileError(UserError):
    """A file given as a model file is not one (or a model configuration names an unknown setting)."""


def _three_ints(values: Iterable[Any]) -> tuple[int, int, int]:
    """A layer shape (C, h, w) or volume grid (X, Y, Z) from any three numbers (ValueError for another count)."""
    a, b, c = (int(v) for v in values)
    return a, b, c


def _three_floats(values: Iterable[Any]) -> tuple[float, float, float]:
    """A per-channel (R, G, B) mean or std from any three numbers (ValueError for another count)."""
    a, b, c = (float(v) for v in values)
    return a, b, c


# The model's defaults, from its constructor (their one home).
_DEFAULTS = model_defaults()


@dataclass(frozen=True)
class ModelConfig:
    """The constructor settings of an :class:`EncodingModel` (the config's ``model`` section).

    Its defaults are read from the model's constructor (:func:`afo.model.model_defaults`), never written here;
    a test holds these fields to the constructor's arguments.
    """

    conv_width: int = _DEFAULTS["conv_width"]
    out_dim: int = _DEFAULTS["out_dim"]
    n_convs: int = _DEFAULTS["n_convs"]
    kernel_size: int = _DEFAULTS["kernel_size"]
    pe_frequencies: int = _DEFAULTS["pe_frequencies"]
    pe_max_period: float = _DEFAULTS["pe_max_period"]
    mlp_width: int = _DEFAULTS["mlp_width"]
    sigma: float = _DEFAULTS["sigma"]
    retina_mapper: str = _DEFAULTS["retina_mapper"]
    layer_selector: str = _DEFAULTS["layer_selector"]
    global_pool: bool = _DEFAULTS["global_pool"]
    readout_chunk: int | None = _DEFAULTS["readout_chunk"]

    @classmethod
    def from_dict(cls, section: dict[str, Any], where: str = "model") -> ModelConfig:
        """From a config's ``model`` section; keys it leaves out keep their defaults, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ModelFileError(f"{where}: unknown model setting(s) {unknown}; known: {sorted(known)}")
        return cls(**section)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build(
        self, layer_shapes: list[tuple[int, int, int]], subject_coords: dict, frames: dict | None = None
    ) -> EncodingModel:
        """A freshly initialised model for features of ``layer_shapes`` and subjects' voxel coordinates [n, 3].

        ``frames`` (subject key -> coordinate frame, :func:`afo.model.subject_frame`) fixes each subject's
        coordinate rescale; a model file carries it in its buffers, so rebuilding one needs none.
        """
        return EncodingModel(layer_shapes, subject_coords, frames=frames, **self.as_dict())


class WeightsFileError(UserError):
    """The local backbone weights file a model was trained with is missing or is not the same file."""


@dataclass(frozen=True)
class BackboneRecord:
    """The frozen backbone a model was trained on (the fields of :class:`afo.features.BackboneSpec`).

    ``weights_file`` is the local weights file as it was named when the features were computed and
    ``weights_sha256`` its hash; ``pretrained`` means timm's own download; neither: timm's random
    initialisation with afo's fixed seed (:data:`afo.features.RANDOM_INIT_SEED`), the same on every machine.
    """

    name: str
    layers: tuple[int, ...]
    resolution: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    weights_file: str | None = None
    weights_sha256: str | None = None

    @property
    def weights_source(self) -> str:
        if self.weights_file:
            return f"file:{self.weights_file}"
        return "timm" if self.pretrained else "random-init"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        out["model_kwargs"] = json.dumps(self.model_kwargs, sort_keys=True)  # any JSON value, one plain string
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BackboneRecord:
        kwargs = d.get("model_kwargs") or "{}"
        return cls(
            name=str(d["name"]),
            layers=tuple(int(i) for i in d["layers"]),
            resolution=int(d["resolution"]),
            model_kwargs=json.loads(kwargs) if isinstance(kwargs, str) else dict(kwargs),
            pretrained=bool(d.get("pretrained", False)),
            weights_file=d.get("weights_file") or None,
            weights_sha256=d.get("weights_sha256") or None,
        )

    def spec(self, weights_file: str | Path | None = None) -> BackboneSpec:
        """The :class:`afo.features.BackboneSpec` that rebuilds this backbone.

        ``weights_file`` replaces the recorded path (the file moved, or another machine); either way the file
        must have the recorded SHA-256, else :class:`WeightsFileError` naming the file and the expected hash.
        """
        from afo.features import BackboneSpec

        if weights_file and not self.weights_file:
            raise WeightsFileError(
                f"{weights_file}: this model's {self.name} backbone used no local weights file "
                f"({self.weights_source}), so --weights / weights= cannot apply; leave it out"
            )
        path = str(weights_file) if weights_file else self.weights_file
        if path:
            check_weights_file(path, self.weights_sha256, self.name)
        return BackboneSpec(
            self.name,
            self.layers,
            self.resolution,
            pretrained=self.pretrained,
            pretrained_path=path,
            model_kwargs=dict(self.model_kwargs),
        )

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> BackboneRecord:
        """From a config's ``backbone`` section (``backbone.cache: none``: no feature cache records it)."""
        from afo.features import BackboneSpec

        spec = BackboneSpec.from_config(dict(section))
        attrs = {
            "pretrained_source": spec.pretrained_source,
            "backbone": spec.name,
            "layers": json.dumps(list(spec.layers)),
            "resolution": spec.resolution,
            "model_kwargs": json.dumps(spec.model_kwargs),
        }
        return cls.from_cache_attrs(attrs, "the config's backbone section (pretrained_path)")

    @classmethod
    def from_cache_attrs(cls, attrs: Mapping[str, Any], where: str) -> BackboneRecord:
        """From a feature cache's attributes (``afo.features``); hashes the named local weights file."""
        source = str(attrs["pretrained_source"])
        weights = source[len("file:") :] if source.startswith("file:") else None
        if weights is not None and not Path(weights).is_file():
            raise WeightsFileError(
                f"{where}: its features were computed with the weights file {weights}, which is gone; "
                "restore it (the model file records its hash) or rerun the features rule"
            )
        return cls(
            name=str(attrs["backbone"]),
            layers=tuple(int(i) for i in json.loads(attrs["layers"])),
            resolution=int(attrs["resolution"]),
            model_kwargs=json.loads(attrs.get("model_kwargs", "{}")),
            # Absolute: a config names it relative to the workflow folder, a user loads the model from anywhere.
            pretrained=source == "timm",
            weights_file=str(Path(weights).resolve()) if weights else None,
            weights_sha256=file_sha256(weights) if weights else None,
        )


def check_weights_file(path: str | Path, expected: str | None, backbone: str) -> None:
    """:class:`WeightsFileError` unless ``path`` is a file whose SHA-256 is ``expected`` (None: not recorded)."""
    if not Path(path).is_file():
        raise WeightsFileError(
            f"{path}: the {backbone} weights file this model was trained with is not here (expected "
            f"SHA-256 {expected}); copy it there or pass its new location (afo.load(..., weights=PATH), "
            "--weights PATH)"
        )
    if expected is not None:
        found = file_sha256(path)
        if found != expected:
            raise WeightsFileError(
                f"{path}: not the {backbone} weights file this model was trained with (SHA-256 {found}, "
                f"expected {expected}); give the original file"
            )


@dataclass(frozen=True)
class Preprocessing:
    """How the workflow turns an image file into backbone input, exactly (``afo.data`` then ``afo.features``):

    1. read as 8-bit RGB (16-bit and float samples scaled, :func:`afo.data.media.to_rgb8`);
    2. squashed (no crop) to ``image_size`` x ``image_size`` with PIL bicubic (:func:`afo.data.media.resize_image`),
       as the prepared store holds it;
    3. divided by 255, resized to the backbone's resolution with torch bicubic (align_corners False, clamped to
       [0, 1]) when it differs, normalised with ``mean`` / ``std`` per channel (the timm model's);
    4. backbone layers rounded to ``feature_dtype`` (the feature cache's), which the model reads.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dtype: str = FEATURE_DTYPE

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "feature_dtype": self.feature_dtype,
            "resize": "squash, PIL bicubic, then torch bicubic to the backbone resolution",
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        return cls(
            int(d["image_size"]),
            _three_floats(d["mean"]),
            _three_floats(d["std"]),
            str(d.get("feature_dtype", FEATURE_DTYPE)),
        )


@dataclass(frozen=True)
class SubjectRecord:
    """What a model knows about one subject beyond its voxels' indices and coordinates.

    rois: ROI set -> label of each modelled voxel ('' = none), in the model's voxel order.
    affine / volume_shape: the voxel-to-mm affine [4, 4] and grid (X, Y, Z) of a volumetric subject (None else).
    n_voxels: voxels of the subject in its dataset (the columns of its responses), so that a full-length response
    of another subject is told apart (None in files before version 3).
    """

    dataset: str
    subject: str
    modality: str
    rois: dict[str, list[str]] = field(default_factory=dict)
    affine: list[list[float]] | None = None
    volume_shape: tuple[int, int, int] | None = None
    n_voxels: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["volume_shape"] = list(self.volume_shape) if self.volume_shape else None
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SubjectRecord:
        shape = d.get("volume_shape")
        return cls(
            str(d["dataset"]),
            str(d["subject"]),
            str(d["modality"]),
            {k: list(v) for k, v in (d.get("rois") or {}).items()},
            d.get("affine"),
            _three_ints(shape) if shape else None,
            int(d["n_voxels"]) if d.get("n_voxels") is not None else None,
        )


@dataclass(frozen=True)
class ModelInputs:
    """Where a model's inputs came from: backbone, preprocessing, subjects (model file version 2)."""

    backbone: BackboneRecord
    preprocessing: Preprocessing
    subjects: dict[str, SubjectRecord]

    @classmethod
    def of(
        cls,
        stores: Mapping[str, str | Path],
        features: Mapping[str, str | Path],
        voxels: Mapping[str, Any],
        backbone: Mapping[str, Any] | None = None,
    ) -> ModelInputs:
        """From a job's prepared stores and feature caches (dataset -> path) and the model's voxels per subject key;
        ``backbone``: the config's backbone section when the job ran it on the fly (``backbone.cache: none``)."""
        from afo.data.store import PreparedStore, volume_geometry

        records, sizes = {}, set()
        for dataset, path in sorted(stores.items()):
            with PreparedStore(path) as store:
                sizes.add(store.image_size)
                for name in store.subjects:
                    key = f"{dataset}/{name}"
                    if key not in voxels:
                        continue
                    index = np.asarray(voxels[key], dtype=np.int64)
                    sets = store.info(name).roi_sets
                    geometry = volume_geometry(store.subject_attrs(name))
                    records[key] = SubjectRecord(
                        dataset,
                        name,
                        store.modality,
                        rois={s: [str(x) for x in store.rois(name, s)[index]] for s in sets},
                        affine=geometry[0].tolist() if geometry else None,
                        volume_shape=geometry[1] if geometry else None,
                        n_voxels=store.info(name).n_voxels,
                    )
        backbones = {}
        if backbone is not None and backbone.get("cache", "disk") == "none":
            backbones["(backbone.cache none)"] = BackboneRecord.from_config(backbone)
        for dataset, path in sorted(features.items()):
            with h5py.File(path, "r") as f:
                backbones[dataset] = BackboneRecord.from_cache_attrs(dict(f.attrs), str(path))
        distinct = list({json.dumps(b.as_dict(), sort_keys=True): b for b in backbones.values()}.values())
        if len(distinct) != 1 or len(sizes) != 1:
            raise ModelFileError(
                f"the job's feature caches and stores disagree on the backbone or image size "
                f"({ {d: b.name for d, b in backbones.items()} }, image sizes {sorted(sizes)}); one model "
                "reads one backbone: compute every dataset's features with the same backbone section"
            )
        record = distinct[0]
        mean, std = backbone_normalisation(record)
        return cls(record, Preprocessing(sizes.pop(), mean, std), records)


def backbone_normalisation(backbone: BackboneRecord) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The per-channel mean and std :func:`afo.features.backbone_features` applies for this backbone (timm's)."""
    from afo.features import BackboneSpec, _normalisation, create_backbone

    # Built without weights: the normalisation comes from the model's name, not from its weights.
    net = create_backbone(
        BackboneSpec(backbone.name, backbone.layers, backbone.resolution, model_kwargs=dict(backbone.model_kwargs))
    )
    mean, std = _normalisation(net)
    return _three_floats(mean.flatten()), _three_floats(std.flatten())


@dataclass
class ModelFile:
    """The content of a model file. Shapes: n = voxels of a subject."""

    config: ModelConfig
    layer_shapes: list[tuple[int, int, int]]  # (C, h, w) of each tapped backbone layer
    subject_coords: dict[str, torch.Tensor]  # subject key -> float32 [n, 3] (as the neck saw them)
    voxels: dict[str, torch.Tensor]  # subject key -> int64 [n]: the model's voxel i is the store's voxels[i]
    info: dict[str, Any] = field(default_factory=dict)  # val_r, soup members, epochs, seconds, spec (JSON)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)  # empty once loaded into a model
    inputs: ModelInputs | None = None  # None in version-1 files
    afo_version: str | None = None  # the afo that wrote the file (None in version-1 files)
    version: int = MODEL_VERSION

    @classmethod
    def of(
        cls,
        model: EncodingModel,
        config: ModelConfig,
        voxels: dict[str, torch.Tensor],
        info: dict[str, Any],
        inputs: ModelInputs | None = None,
    ) -> ModelFile:
        """The model file of a trained model (weights and coordinates copied to the CPU); ``inputs``: see
        :meth:`ModelInputs.of` (the workflow always records them)."""
        return cls(
            config=config,
            layer_shapes=[_three_ints(s) for s in model.layer_shapes],
            subject_coords={k: model._neck(k).coords.detach().cpu() for k in model.subjects},
            voxels={k: torch.as_tensor(v, dtype=torch.long) for k, v in voxels.items()},
            info=dict(info),
            state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            inputs=inputs,
            afo_version=_afo_version(),
        )

    def to_payload(self) -> dict[str, Any]:
        inputs = self.inputs
        payload = {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "layer_shapes": [list(s) for s in self.layer_shapes],
            "model_args": self.config.as_dict(),
            "subject_coords": self.subject_coords,
            "voxels": self.voxels,
            "state_dict": self.state_dict,
            "info": self.info,
            "backbone": inputs.backbone.as_dict() if inputs else None,
            "preprocessing": inputs.preprocessing.as_dict() if inputs else None,
            "subjects": {k: r.as_dict() for k, r in inputs.subjects.items()} if inputs else None,
            "afo_version": self.afo_version or _afo_version(),
        }
        payload["sha256"] = content_checksum(payload)
        return payload

    @classmethod
    def from_payload(cls, payload: Any, path: str | Path) -> ModelFile:
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ModelFileError(
                f"{path}: not an afo model file (format {found!r}); give a model.pt written by `afo train`"
            )
        version = int(payload.get("version", 0))
        if version > MODEL_VERSION:
            raise ModelFileError(
                f"{path}: model file version {version} is newer than this afo reads ({MODEL_VERSION}); update afo"
            )
        _verify_checksum(payload, version, path)
        inputs = None
        if version >= 2 and payload.get("backbone") is not None:
            try:
                inputs = ModelInputs(
                    BackboneRecord.from_dict(payload["backbone"]),
                    Preprocessing.from_dict(payload["preprocessing"]),
                    {k: SubjectRecord.from_dict(v) for k, v in payload["subjects"].items()},
                )
            except (KeyError, TypeError, ValueError) as err:
                raise ModelFileError(
                    f"{path}: its backbone / preprocessing / subjects records are incomplete ({err!r}); {REBUILD}"
                ) from err
        return cls(
            config=ModelConfig.from_dict(payload["model_args"], where=f"{path}: model_args"),
            layer_shapes=[_three_ints(s) for s in payload["layer_shapes"]],
            subject_coords=payload["subject_coords"],
            voxels=payload["voxels"],
            info=payload.get("info", {}),
            state_dict=payload.get("state_dict", {}),
            inputs=inputs,
            afo_version=payload.get("afo_version"),
            version=version,
        )

    def require_inputs(self, path: str | Path) -> ModelInputs:
        """The backbone / preprocessing / subject records, or a :class:`ModelFileError` for a file without them."""
        if self.inputs is None:
            raise ModelFileError(
                f"{path}: a version-{self.version} model file, which does not record its backbone and preprocessing; "
                "retrain it with this afo (snakemake reruns nothing else: delete the model.pt and the job rebuilds it from "
                "its work/ folder), or give the backbone yourself (`afo decode --config` / afo.load(..., backbone=, image_size=))"
            )
        return self.inputs

    def build(self, where: str | Path = "the model file") -> EncodingModel:
        """The model with this file's weights, in eval mode (``where``: the file, for messages)."""
        model = self.config.build(self.layer_shapes, self.subject_coords)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as err:  # an edited model_args or layer_shapes in a file whose checksum does not cover them
            first = str(err).strip().splitlines()[-1].strip()
            raise ModelFileError(
                f"{where}: its weights do not fit its model_args / layer_shapes ({first}); the file was edited "
                f"or damaged: {REBUILD}"
            ) from err
        return model.eval()


def _afo_version() -> str:
    import afo

    return afo.__version__


def save_model(path: str | Path, model_file: ModelFile) -> None:
    """Write a model file atomically."""
    with atomic_path(path) as tmp:
        torch.save(model_file.to_payload(), tmp)


def content_checksum(payload: Mapping[str, Any]) -> str:
    """SHA-256 over every entry of a payload but ``sha256`` itself (version 3): weights, voxels, settings, records.

    Anything that changes what the model predicts or reports (an image size, an ROI label, ``out_dim``) is
    covered, so an edit or damage that keeps the file's size is refused instead of loaded.
    """
    digest = hashlib.sha256()
    _digest_value(digest, {k: v for k, v in payload.items() if k != "sha256"})
    return digest.hexdigest()


def _digest_value(digest: Any, value: Any) -> None:
    """Feed ``value`` to ``digest`` unambiguously (type tags and lengths): tensors, mappings, sequences, scalars."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes of any dtype (bf16 too)
    elif isinstance(value, Mapping):
        digest.update(f"dict {len(value)}:".encode())
        for key in sorted(value, key=str):
            digest.update(f"{key!r}=".encode())
            _digest_value(digest, value[key])
    elif isinstance(value, (list, tuple)):  # torch.load may return either for what was saved as one of them
        digest.update(f"list {len(value)}:".encode())
        for item in value:
            _digest_value(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def weights_checksum(state_dict: Mapping[str, torch.Tensor], voxels: Mapping[str, torch.Tensor]) -> str:
    """The checksum of version 1-2 files: SHA-256 over the weights and voxel indices only, in key order."""
    digest = hashlib.sha256()
    for mapping in (state_dict, voxels):
        for key in sorted(mapping):
            digest.update(key.encode())
            digest.update(mapping[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _verify_checksum(payload: dict[str, Any], version: int, path: str | Path) -> None:
    """A version-3 file must match :func:`content_checksum`; older files are checked on their weights and voxel
    indices only (:func:`weights_checksum`), which is all they recorded."""
    if version >= 3:
        if payload.get("sha256") != content_checksum(payload):
            raise ModelFileError(
                f"{path}: its content does not match the file's checksum (the file was damaged or edited); "
                f"delete it and {REBUILD}"
            )
    elif "sha256" in payload and payload["sha256"] != weights_checksum(
        payload.get("state_dict", {}), payload.get("voxels", {})
    ):
        raise ModelFileError(
            f"{path}: the weights do not match the file's checksum (the file was damaged); delete it and {REBUILD}"
        )


# What a file that is not a torch archive usually is, by its first bytes: a download that went wrong.
_NOT_A_MODEL = (
    (b"version https://git-lfs", "a Git LFS pointer, not the file itself; fetch it with `git lfs pull`"),
    (b"<", "an HTML/XML page (a download link that returned a web page); download the file itself"),
    (b"{", "a JSON text file; give the model.pt itself"),
    (b"[", "a JSON text file; give the model.pt itself"),
)
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; the legacy (pre-1.6) pickle format


def _check_torch_file(path: Path) -> None:
    """A :class:`ModelFileError` for a file that cannot be a torch archive, saying what it looks like instead."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(_TORCH_MAGIC):
        return
    what = "an empty file" if not head else "not a model file (it is not a torch archive)"
    for start, kind in _NOT_A_MODEL:
        if head.lstrip().startswith(start):
            what = kind
            break
    raise ModelFileError(f"{path}: {what}; give a model.pt written by afo (`afo train`, `afo finetune`, the workflow)")


def read_model_file(path: str | Path, map_location: str | torch.device = "cpu") -> ModelFile:
    """A model file's content, weights included (loaded with ``weights_only=True``; checksum verified)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no model file here; {REBUILD}")
    _check_torch_file(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, which would run the file's code: never repeat it.
        raise ModelFileError(
            f"{path}: holds Python objects other than tensors and plain data, so it is not an afo model file "
            "(afo reads model files only with torch's safe loader); give a model.pt written by afo"
        ) from exc
    except (RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError) as exc:
        # A truncated or overwritten archive: torch reports it as one of these, without the path.
        raise ModelFileError(
            f"{path}: cannot read this model file ({type(exc).__name__}: {_one_line(exc)}); it is truncated or "
            f"damaged — delete it and {REBUILD}"
        ) from exc
    return ModelFile.from_payload(payload, path)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[EncodingModel, ModelFile]:
    """Rebuild a model from a model file: (model in eval mode, the file's content without the weights)."""
    model_file = read_model_file(path, map_location)
    return model_file.build(path), replace(model_file, state_dict={})
