"""afo as a library: load a model file once, then predict brain responses for your own images.

    import afo
    m = afo.load("results/models/afo/stage3/model.pt")   # torch and timm load here, not at `import afo`
    m.subjects                                       # ["synth_fmri/subj01", ...]
    m.voxels("synth_fmri/subj01")                    # voxel (store index), x, y, z, roi_<set> per ROI set
    pred = m.predict(["a.png", "b.jpg"], subject="synth_fmri/subj01")   # float32 [2, n_voxels]
    core = m.features(images)                        # trained backbone + conv blocks: list of [B, D, h_l, w_l]

Everything comes from the model file (version 2, :mod:`afo.training.modelfile`): the backbone, the image
preprocessing exactly as the workflow does it, the subjects. Images may be file paths, PIL images or uint8
arrays ``[H, W, 3]`` (or one ``[B, H, W, 3]`` array); they are run in batches, on the GPU when there is one.

:func:`predict_folder` is ``afo predict --images DIR``: every image of a folder, every subject, one prediction
file (and optionally one NIfTI map per image for volumetric subjects).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from afo.data.media import IMAGE_EXTENSIONS, load_image
from afo.errors import UserError

if TYPE_CHECKING:  # torch and PIL load on first use, never at `import afo`
    import pandas as pd
    import torch
    from PIL import Image

    from afo.model import EncodingModel
    from afo.training.modelfile import ModelFile, ModelInputs

log = logging.getLogger(__name__)

ImageLike = Union[str, Path, "Image.Image", np.ndarray]
_MAP_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class ImageInputError(UserError, ValueError):
    """Images given to a model that it cannot read (a missing folder, an empty one, a wrong array)."""


class OutputPathError(UserError):
    """An output path that cannot be written as asked (a folder, a device, under a file, read-only)."""


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder (PIL-readable suffixes), sorted by name; a broken link among them is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageInputError(f"{folder}: no such folder of images")
    named = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir())
    broken = [p.name for p in named if not p.is_file()]
    if broken:
        raise ImageInputError(
            f"{folder}: {broken[:5]} {'is a' if len(broken) == 1 else 'are'} broken symbolic link(s) or not "
            "regular files; restore their targets or remove them from the folder"
        )
    if not named:
        raise ImageInputError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return named


def check_output_file(path: str | Path, flag: str) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, something that is not a regular
    file (the atomic rename would replace a device or a pipe with a file), a path under a file, a read-only folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{flag} {path}: is a folder; name a file to write (e.g. {path / 'out'})")
    if path.exists() and not path.is_file():
        raise OutputPathError(
            f"{flag} {path}: exists and is not a regular file (a device, pipe or socket), which the write would "
            "replace; name a regular file"
        )
    check_output_folder(path.parent, flag, named=path)


def check_output_folder(folder: str | Path, flag: str, named: str | Path | None = None) -> None:
    """Refuse, before any work, a folder that cannot be written: not a folder, under a file, a read-only place.

    A folder that does not exist yet is created by the writer, so its nearest existing parent must be writable.
    ``named``: the path the user gave (default ``folder``), for the message.
    """
    folder = Path(folder)
    named = folder if named is None else named
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is not a folder" if existing == named else f"is under {existing}, which is not a folder"
        raise OutputPathError(f"{flag} {named}: {where}; name a path in a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {named}: {existing} is not writable; choose a folder you can write to")


def _check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ImageInputError(
            f"batch size {batch_size!r} (--batch-size, batch_size=): must be a whole number of images, 1 or more"
        )
    return int(batch_size)


def _as_list(images: ImageLike | Iterable[ImageLike]) -> list[ImageLike]:
    """One image or many -> a list of images (a [B, H, W, 3] array is B images)."""
    from PIL import Image

    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ImageInputError(f"an image array must be [H, W, 3] or [B, H, W, 3] uint8, got shape {images.shape}")
    if not isinstance(images, Iterable) or isinstance(images, (bytes, Mapping)):
        raise ImageInputError(
            f"images: got {type(images).__name__}; give file paths, PIL images or uint8 arrays [H, W, 3] (or a list)"
        )
    return list(images)


def _check_image(image: object, index: int) -> None:
    """A :class:`ImageInputError` for an item that is not an image path, a PIL image or a non-empty [H, W, 3] array."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ImageInputError(f"image {index}: an image array must be [H, W, 3] uint8, got shape {image.shape}")
        size = image.shape[:2]
    elif isinstance(image, Image.Image):
        size = image.size
    elif isinstance(image, (str, Path)):
        return
    else:
        raise ImageInputError(
            f"image {index}: got {type(image).__name__}; give a file path, a PIL image or a uint8 array [H, W, 3]"
        )
    if 0 in size:
        raise ImageInputError(f"image {index}: is empty ({size[0]} x {size[1]} px); give a picture with pixels")


class Model:
    """A trained encoding model with its backbone and preprocessing, ready for images (see the module docstring).

    Build it with :func:`load`. Attributes: ``path`` (the model file), ``device``, ``inputs`` (the file's
    :class:`~afo.training.modelfile.ModelInputs`), ``info`` (how it was trained).
    """

    def __init__(
        self,
        path: Path,
        model: EncodingModel,
        model_file: ModelFile,
        inputs: ModelInputs,
        device: torch.device,
        weights: str | Path | None = None,
    ):
        self.path = path
        self.device = device
        self.inputs = inputs
        self.info = dict(model_file.info)
        self._model = model.to(device).eval()
        self._file = model_file
        # Checked now (a missing or changed weights file fails at load, not at the first image); built lazily.
        self._spec = inputs.backbone.spec(weights)
        self._backbone: torch.nn.Module | None = None

    def __repr__(self) -> str:
        b = self.inputs.backbone
        return f"afo.Model({self.path}, backbone {b.name} layers {list(b.layers)} at {b.resolution} px, subjects {self.subjects})"

    # -- what the model knows ---------------------------------------------------------------------------------

    @property
    def subjects(self) -> list[str]:
        """Subject keys ``"<dataset>/<subject>"`` the model predicts."""
        return list(self._model.subjects)

    def voxels(self, subject: str) -> pd.DataFrame:
        """One row per predicted voxel, in the order of :meth:`predict`'s columns.

        Columns: ``voxel`` (index in the subject's dataset: the column of its responses.npy), ``x, y, z`` (the
        coordinates the model read: mm for fMRI; sensor position / time for EEG and MEG), then ``roi_<set>`` for
        each ROI set the model knows (the dataset's labels; '' = none).
        """
        import pandas as pd

        self._check_subject(subject)
        coords = self._file.subject_coords[subject].numpy()
        table = pd.DataFrame({"voxel": self._file.voxels[subject].numpy()})
        for axis, name in enumerate("xyz"[: coords.shape[1]]):
            table[name] = coords[:, axis]
        record = self.inputs.subjects.get(subject)
        for roi_set, labels in record.rois.items() if record else ():
            table[f"roi_{roi_set}"] = labels
        return table

    def _check_subject(self, subject: str) -> None:
        if subject not in self._model.subjects:
            raise ImageInputError(f"subject {subject!r} is not in {self.path}; it has {self.subjects}")

    # -- images -> backbone -> core -> voxels ---------------------------------------------------------------------

    def preprocess(self, images: ImageLike | Iterable[ImageLike]) -> np.ndarray:
        """Images -> uint8 [B, S, S, 3] as the prepared store holds them (S = the recorded image size)."""
        from afo.data.media import resize_image

        size = self.inputs.preprocessing.image_size
        out = []
        for index, image in enumerate(_as_list(images)):
            _check_image(image, index)
            if isinstance(image, (str, Path)):
                image = load_image(image)
                _check_image(image, index)
            out.append(resize_image(image, size))
        if not out:
            raise ImageInputError("no images given")
        return np.stack(out)

    def _backbone_layers(self, pixels: np.ndarray) -> list[torch.Tensor]:
        """uint8 [B, S, S, 3] -> the backbone's tapped layers, rounded to the feature cache's dtype (as trained)."""
        import torch

        from afo.features import _normalisation, backbone_features, create_backbone

        if self._backbone is None:
            self._backbone = create_backbone(self._spec).to(self.device)
            mean, std = (tuple(round(float(v), 6) for v in t.flatten()) for t in _normalisation(self._backbone))
            recorded = self.inputs.preprocessing
            if mean != tuple(round(v, 6) for v in recorded.mean) or std != tuple(round(v, 6) for v in recorded.std):
                raise UserError(
                    f"{self.path}: timm now normalises {self._spec.name} with mean {mean}, std {std}; the model "
                    f"was trained with {recorded.mean}, {recorded.std}: install the timm version it was trained with"
                )
        feats = backbone_features(self._backbone, pixels, self._spec, self.device)
        dtype = getattr(torch, self.inputs.preprocessing.feature_dtype)
        shapes = [tuple(f.shape[1:]) for f in feats]
        if shapes != [tuple(s) for s in self._model.layer_shapes]:
            raise UserError(
                f"{self.path}: the backbone gives layers {shapes} but the model was trained on "
                f"{self._model.layer_shapes}; the backbone record does not fit this model"
            )
        return [f.to(dtype) for f in feats]

    def _batches(
        self, images: ImageLike | Iterable[ImageLike], batch_size: int, what: str, progress: bool
    ) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """(start, core output) per batch of images; with ``progress``, a line per batch on the ``afo`` logger (on
        stderr unless the program configured logging)."""
        import torch

        from afo.runtime import log_to_stderr_unless_configured

        batch_size = _check_batch_size(batch_size)
        items = _as_list(images)
        if not items:
            raise ImageInputError("no images given")
        for index, item in enumerate(items):  # every item, before the first batch is computed
            _check_image(item, index)
        if progress:
            log_to_stderr_unless_configured()
        started = time.time()
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            with torch.no_grad():
                core = self._model.core(self._backbone_layers(self.preprocess(batch)))
            yield start, core
            done = start + len(batch)
            if progress:
                log.info(
                    "%s: %d/%d images (%.1f img/s)", what, done, len(items), done / max(time.time() - started, 1e-9)
                )

    def predict(
        self,
        images: ImageLike | Iterable[ImageLike],
        subject: str | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Predicted responses: float32 [B, n_voxels] of ``subject`` (columns as :meth:`voxels`), or, with
        ``subject=None``, a dict subject key -> that array for every subject (one backbone pass for all).
        ``progress``: a line per batch on stderr (images done, images per second), as ``afo predict`` shows."""
        import torch

        wanted = [subject] if subject is not None else self.subjects
        for s in wanted:
            self._check_subject(s)
        out: dict[str, list[np.ndarray]] = {s: [] for s in wanted}
        for _, core in self._batches(images, batch_size, f"{self.path.name}: predict", progress):
            for s in wanted:
                with torch.no_grad():
                    out[s].append(self._model.readout(core, s).cpu().numpy())
        result = {s: np.concatenate(parts).astype(np.float32) for s, parts in out.items()}
        return result[subject] if subject is not None else result

    def features(
        self, images: ImageLike | Iterable[ImageLike], batch_size: int = 32, progress: bool = False
    ) -> list[np.ndarray]:
        """The trained core's features for your own probing: the frozen backbone's layers through the trained conv
        blocks, one float32 array [B, D, h_l, w_l] per tapped layer (shallowest first; D = the model's out_dim).
        ``progress``: as in :meth:`predict`."""
        parts: list[list[np.ndarray]] = []
        for _, core in self._batches(images, batch_size, f"{self.path.name}: features", progress):
            if not parts:
                parts = [[] for _ in core]
            for layer, maps in zip(parts, core):
                layer.append(maps.float().cpu().numpy())
        return [np.concatenate(layer) for layer in parts]


def load(
    path: str | Path,
    device: str = "auto",
    weights: str | Path | None = None,
    backbone: Mapping[str, Any] | None = None,
    image_size: int | None = None,
) -> Model:
    """Load a model for use on images (see the module docstring).

    Args:
        path: a model file (``model.pt``) written by the workflow, ``afo train`` or ``afo finetune``; a model
            folder written by ``afo export``; or a hub name ``hf://owner/name[@revision]`` (such a folder on the
            Hugging Face hub, fetched by huggingface_hub or read from its cache offline: docs/sharing.md).
        device: ``auto`` (the GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
        weights: where the backbone's local weights file is now, if it moved (its SHA-256 must match the record).
        backbone, image_size: only for version-1 model files, which do not record them: the workflow's
            ``backbone`` section and ``prepare.image_size`` the model was trained with.

    Raises:
        afo.training.modelfile.ModelFileError: not a model file or folder, damaged, or a version-1 file without
            ``backbone``.
        afo.sharing.HubError: a hub name that is neither in huggingface_hub's cache nor downloadable.
        afo.training.modelfile.WeightsFileError: the local weights file is missing or is another file.
    """
    from afo.runtime import resolve_device
    from afo.sharing import resolve_model
    from afo.training.modelfile import load_model
    from afo.training.modelfolder import is_model_folder, load_model_folder

    path = resolve_model(path)
    model, model_file = load_model_folder(path) if is_model_folder(path) else load_model(path)
    inputs = model_file.inputs
    if inputs is None and backbone is not None:
        inputs = legacy_inputs(model_file, backbone, image_size)
    if inputs is None:
        inputs = model_file.require_inputs(path)  # raises the one-line error
    return Model(path, model, model_file, inputs, resolve_device(device), weights)


def legacy_inputs(model_file: ModelFile, backbone: Mapping[str, Any], image_size: int | None) -> ModelInputs:
    """Input records for a version-1 model file from the workflow's ``backbone`` section (no hash, no ROI labels)."""
    from afo.training.modelfile import BackboneRecord, ModelInputs, Preprocessing, SubjectRecord, backbone_normalisation

    record = BackboneRecord(
        name=str(backbone["name"]),
        layers=tuple(int(i) for i in backbone["layers"]),
        resolution=int(backbone["resolution"]),
        model_kwargs=dict(backbone.get("model_kwargs") or {}),
        pretrained=bool(backbone.get("pretrained", False)),
        weights_file=backbone.get("pretrained_path") or None,
    )
    mean, std = backbone_normalisation(record)
    subjects = {}
    for key in model_file.voxels:
        dataset, subject = key.split("/", 1)  # a model's subject keys are dataset/subject
        subjects[key] = SubjectRecord(dataset, subject, modality="unknown")
    return ModelInputs(record, Preprocessing(int(image_size or record.resolution), mean, std), subjects)


def map_name(image: str) -> str:
    """A NIfTI map name from an image file name (letters, digits, ``_ - .``; starts with a letter or digit)."""
    name = _MAP_NAME.sub("_", Path(image).stem)
    return name if name[:1].isalnum() else f"img{name}"


def predict_folder(
    model_path: str | Path,
    images_dir: str | Path,
    out: str | Path,
    subjects: Sequence[str] | None = None,
    maps_dir: str | Path | None = None,
    batch_size: int = 32,
    device: str = "auto",
    weights: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Predict every image of a folder for every subject (or ``subjects``) of a model file (``progress``: a line
    per batch on stderr, as :meth:`Model.predict`).

    Writes a prediction file (:mod:`afo.io.predictions` layout): ``/<dataset>/<subject>/{images, voxels, pred}``
    with ``images`` = row in the sorted list of the folder's image files, whose names are the file's root
    attribute ``image_names`` (JSON list); the root attribute ``images_dir`` names the folder. With ``maps_dir``,
    every volumetric subject (one with an affine in the model file) also gets one float32 NIfTI map per image,
    ``<maps_dir>/<dataset>__<subject>/<image stem>.nii.gz``, in its own space (:mod:`afo.figures.brainmaps`).
    """
    from afo.figures.brainmaps import write_volume_maps
    from afo.io.predictions import write_predictions
    from afo.runtime import log_to_stderr_unless_configured, resolve_device

    if progress:
        log_to_stderr_unless_configured()  # the line naming the work, then a line per batch
    # Everything that can be checked cheaply is checked before the first image is predicted.
    check_output_file(out, "--out")
    if maps_dir is not None:
        check_output_folder(maps_dir, "--maps")
    batch_size = _check_batch_size(batch_size)
    resolve_device(device)
    files = list_images(images_dir)
    names = [f.name for f in files]
    stems = [map_name(n) for n in names]
    if maps_dir is not None and len(set(stems)) != len(stems):
        raise ImageInputError(
            f"{images_dir}: image names that differ only in their suffix or in characters other "
            "than letters, digits, _ - . would share a map file; rename them"
        )
    model = load(model_path, device=device, weights=weights)
    wanted = list(dict.fromkeys(subjects)) if subjects else model.subjects  # a subject named twice is one subject
    for s in wanted:
        model._check_subject(s)
    log.info(
        "%s: predicting %d images of %s for %d subject(s) on %s",
        model_path,
        len(files),
        images_dir,
        len(wanted),
        model.device,
    )
    preds = model.predict(files, batch_size=batch_size, progress=progress)
    index = np.arange(len(files), dtype=np.int64)
    write_predictions(
        out,
        {s: (index, model._file.voxels[s].numpy(), preds[s]) for s in wanted},
        dtype="float32",
        attrs={"image_names": json.dumps(names), "images_dir": str(images_dir), "model": str(model_path)},
    )
    report: dict[str, Any] = {"images": len(files), "subjects": len(wanted), "out": str(out)}
    if maps_dir is not None:
        written, skipped = 0, []
        for s in wanted:
            record = model.inputs.subjects.get(s)
            if record is None or record.affine is None or record.volume_shape is None:
                skipped.append(s)
                continue
            coords = model._file.subject_coords[s].numpy()
            prefix = f"{Path(maps_dir) / s.replace('/', '__')}/"
            written += len(
                write_volume_maps(
                    prefix,
                    coords,
                    np.asarray(record.affine),
                    record.volume_shape,
                    {stem: preds[s][i] for i, stem in enumerate(stems)},
                )
            )
        report.update(maps=written, not_volumetric=skipped)
    return report
