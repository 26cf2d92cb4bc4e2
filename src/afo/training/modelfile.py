"""Model files: the typed model configuration and the payload of ``model.pt``.

A model file holds everything needed to rebuild and use a trained model, in types that
``torch.load(..., weights_only=True)`` accepts: the model configuration, the feature layer shapes, per-subject
coordinates and voxel indices, the state dict, and how it was made (validation score, soup members).
On disk it is a plain dict (keys ``format, version, layer_shapes, model_args, subject_coords, voxels,
state_dict, info``); :class:`ModelFile` is its typed view.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from afo.errors import UserError
from afo.io import atomic_path
from afo.model import EncodingModel

MODEL_FORMAT = "afo-encoding-model"
MODEL_VERSION = 1


class ModelFileError(UserError):
    """A file given as a model file is not one (or a model configuration names an unknown setting)."""


@dataclass(frozen=True)
class ModelConfig:
    """The constructor settings of an :class:`EncodingModel` (the config's ``model`` section); defaults as the model's."""

    conv_width: int = 768
    out_dim: int = 256
    n_convs: int = 3
    kernel_size: int = 5
    pe_frequencies: int = 32
    pe_max_period: float = 100.0
    mlp_width: int = 128
    sigma: float = 0.01
    retina_mapper: str = "learned"
    layer_selector: str = "learned"
    global_pool: bool = True
    readout_chunk: int | None = None

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

    def build(self, layer_shapes: list[tuple[int, int, int]], subject_coords: dict, frames: dict | None = None) -> EncodingModel:
        """A freshly initialised model for features of ``layer_shapes`` and subjects' voxel coordinates [n, 3].

        ``frames`` (subject key -> coordinate frame, :func:`afo.model.subject_frame`) fixes each subject's
        coordinate rescale; a model file carries it in its buffers, so rebuilding one needs none.
        """
        return EncodingModel(layer_shapes, subject_coords, frames=frames, **self.as_dict())


@dataclass
class ModelFile:
    """The content of a model file. Shapes: n = voxels of a subject."""

    config: ModelConfig
    layer_shapes: list[tuple[int, int, int]]  # (C, h, w) of each tapped backbone layer
    subject_coords: dict[str, torch.Tensor]  # subject key -> float32 [n, 3] (as the neck saw them)
    voxels: dict[str, torch.Tensor]  # subject key -> int64 [n]: the model's voxel i is the store's voxels[i]
    info: dict[str, Any] = field(default_factory=dict)  # val_r, soup members, epochs, seconds, spec (JSON)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)  # empty once loaded into a model

    @classmethod
    def of(cls, model: EncodingModel, config: ModelConfig, voxels: dict[str, torch.Tensor], info: dict[str, Any]) -> ModelFile:
        """The model file of a trained model (weights and coordinates copied to the CPU)."""
        return cls(
            config=config,
            layer_shapes=[tuple(int(v) for v in s) for s in model.layer_shapes],
            subject_coords={k: model._neck(k).coords.detach().cpu() for k in model.subjects},
            voxels={k: torch.as_tensor(v, dtype=torch.long) for k, v in voxels.items()},
            info=dict(info),
            state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        )

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "layer_shapes": [list(s) for s in self.layer_shapes],
            "model_args": self.config.as_dict(),
            "subject_coords": self.subject_coords,
            "voxels": self.voxels,
            "state_dict": self.state_dict,
            "info": self.info,
        }

    @classmethod
    def from_payload(cls, payload: Any, path: str | Path) -> ModelFile:
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ModelFileError(f"{path}: not an afo model file (format {found!r}); give a model.pt written by `afo train`")
        if payload.get("version", 0) > MODEL_VERSION:
            raise ModelFileError(f"{path}: model file version {payload['version']} is newer than this afo reads ({MODEL_VERSION}); update afo")
        return cls(
            config=ModelConfig.from_dict(payload["model_args"], where=f"{path}: model_args"),
            layer_shapes=[tuple(int(v) for v in s) for s in payload["layer_shapes"]],
            subject_coords=payload["subject_coords"],
            voxels=payload["voxels"],
            info=payload.get("info", {}),
            state_dict=payload.get("state_dict", {}),
        )

    def build(self) -> EncodingModel:
        """The model with this file's weights, in eval mode."""
        model = self.config.build(self.layer_shapes, self.subject_coords)
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_model(path: str | Path, model_file: ModelFile) -> None:
    """Write a model file atomically."""
    with atomic_path(path) as tmp:
        torch.save(model_file.to_payload(), tmp)


def read_model_file(path: str | Path, map_location: str | torch.device = "cpu") -> ModelFile:
    """A model file's content, weights included."""
    return ModelFile.from_payload(torch.load(path, map_location=map_location, weights_only=True), path)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[EncodingModel, ModelFile]:
    """Rebuild a model from a model file: (model in eval mode, the file's content without the weights)."""
    model_file = read_model_file(path, map_location)
    return model_file.build(), replace(model_file, state_dict={})
