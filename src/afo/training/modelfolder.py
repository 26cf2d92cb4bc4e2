"""Model folders: a model file split into ``model.safetensors`` (tensors) and ``afo_model.json`` (everything else).

A model hub hosts such a folder (docs/sharing.md): safetensors holds only tensors (no code runs when it is read)
and the JSON is plain text a person can read. The folder holds the model file's payload exactly: the tensors
under ``state_dict/<name>``, ``subject_coords/<subject>`` and ``voxels/<subject>``, every other entry (settings,
backbone, preprocessing, subject records, info, afo version, the content checksum) in ``afo_model.json`` under
``model_file``. Reading it rebuilds the payload and checks it against the recorded checksum
(:func:`afo.training.modelfile.content_checksum`), so the folder and the model file it came from build the same
weights and predict the same numbers, bit for bit.

``afo_model.json`` also says, for people and hub pages, what the payload holds in other words: ``subjects``
(per subject: dataset, modality, space, voxel count, the dataset's visual angle when known) and ``weights_sha256``
(the SHA-256 of model.safetensors, checked on reading).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from afo.io import atomic_path, file_sha256
from afo.model import EncodingModel
from afo.training.modelfile import ModelFile, ModelFileError, SubjectRecord, content_checksum

FOLDER_FORMAT = "afo-model-folder"
FOLDER_VERSION = 1
WEIGHTS = "model.safetensors"
RECORD = "afo_model.json"
TENSOR_ENTRIES = ("state_dict", "subject_coords", "voxels")  # the payload's mappings of name -> tensor


def is_model_folder(path: str | Path) -> bool:
    return (Path(path) / RECORD).is_file()


def subject_space(record: SubjectRecord) -> str:
    """Where a subject's voxels live, in words: a volume grid, or what its coordinates are for its modality."""
    if record.volume_shape is not None:
        return "volume {}x{}x{} (voxel-to-mm affine in afo_model.json)".format(*record.volume_shape)
    if record.modality in ("eeg", "meg"):
        return f"{record.modality} sensors x time points"
    return f"{record.modality} voxels or vertices at the dataset's coordinates (no volume grid)"


def write_model_folder(
    model_file: ModelFile, out: str | Path, visual_angles: Mapping[str, float | None] | None = None
) -> dict[str, Path]:
    """Write ``out/model.safetensors`` and ``out/afo_model.json`` from a model file's content (with its weights);
    ``visual_angles``: dataset -> stimulus width in degrees (None: unknown), recorded per subject."""
    from safetensors.torch import save_file

    inputs = model_file.require_inputs("the model file")
    payload = model_file.to_payload()
    tensors: dict[str, torch.Tensor] = {}
    for entry in TENSOR_ENTRIES:
        for name, tensor in payload.pop(entry).items():
            # A copy of its own: safetensors refuses tensors that share memory (tied weights, views).
            tensors[f"{entry}/{name}"] = tensor.detach().cpu().contiguous().clone()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FOLDER_FORMAT})
    angles = dict(visual_angles or {})
    record = {
        "format": FOLDER_FORMAT,
        "version": FOLDER_VERSION,
        "weights": WEIGHTS,
        "weights_sha256": file_sha256(weights),
        "subjects": {
            key: {
                "dataset": r.dataset,
                "subject": r.subject,
                "modality": r.modality,
                "space": subject_space(r),
                "n_voxels_modelled": int(model_file.voxels[key].numel()),
                "n_voxels_in_dataset": r.n_voxels,
                "visual_angle_deg": angles.get(r.dataset),
            }
            for key, r in sorted(inputs.subjects.items())
        },
        "model_file": payload,
    }
    try:
        text = json.dumps(record, indent=1, sort_keys=True)
    except TypeError as err:  # a tensor or other object outside the tensor entries: not a payload this folder holds
        raise ModelFileError(
            f"the model file holds an entry JSON cannot write ({err}); {RECORD} was not written"
        ) from err
    path = out / RECORD
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text + "\n")
    read_model_folder(out)  # what was written reads back to the same checksum, or the export fails here
    return {"weights": weights, "record": path}


def read_model_folder(folder: str | Path) -> ModelFile:
    """A model folder's content, weights included; its checksum is verified as a model file's is."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / RECORD
    if not path.is_file():
        raise ModelFileError(f"{folder}: no {RECORD} here, so not an afo model folder (`afo export` writes one)")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path}: not valid JSON ({err}); export the model again") from err
    if not isinstance(record, dict) or record.get("format") != FOLDER_FORMAT:
        raise ModelFileError(f"{path}: not an afo model folder record (format {record.get('format')!r})")
    if int(record.get("version", 0)) > FOLDER_VERSION:
        raise ModelFileError(
            f"{path}: model folder version {record['version']} is newer than this afo reads; update afo"
        )
    weights = folder / str(record.get("weights", WEIGHTS))
    if not weights.is_file():
        raise ModelFileError(f"{weights}: missing; the folder needs its weights beside {RECORD}")
    if record.get("weights_sha256") and file_sha256(weights) != record["weights_sha256"]:
        raise ModelFileError(
            f"{weights}: not the weights {RECORD} records (SHA-256 differs; a partial download or another file); "
            "download or export the folder again"
        )
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ModelFileError(f"{weights}: cannot read it as safetensors ({err}); download or export it again") from err
    payload: dict[str, Any] = dict(record["model_file"])
    for entry in TENSOR_ENTRIES:
        payload[entry] = {}
    for key, tensor in tensors.items():
        entry, _, name = key.partition("/")
        if entry not in TENSOR_ENTRIES:
            raise ModelFileError(f"{weights}: unexpected tensor {key!r}; not an afo model folder's weights")
        payload[entry][name] = tensor
    if payload.get("sha256") != content_checksum(payload):
        raise ModelFileError(
            f"{folder}: its weights and {RECORD} do not match the recorded checksum (edited, or files of two "
            "exports mixed); export or download the folder again"
        )
    return ModelFile.from_payload(payload, folder)


def load_model_folder(folder: str | Path) -> tuple[EncodingModel, ModelFile]:
    """Rebuild a model from a model folder: (model in eval mode, the content without the weights)."""
    model_file = read_model_folder(folder)
    return model_file.build(folder), replace(model_file, state_dict={})
