"""A new subject on the frozen core: fit a TopyNeck and head per new subject on a trained model's conv blocks.

The cheap path from a released model to a user's own lab data (``afo finetune``, the workflow's ``finetune``
rule): the backbone stays frozen as always, and so do the trained conv blocks; only each new subject's
RetinaMapper, LayerSelector, global-pool MLP and voxel head are trained, with the job machinery of
:mod:`afo.training.fit` (mixed-subject batches, early stopping on validation r, top-k, greedy soup, resume).

The result is one model file holding the base model's subjects unchanged *and* the new ones, with the base
file's backbone and preprocessing records, so ``afo.load``, ``afo predict`` and ``afo decode`` take it as they
take the base model. New subjects are named ``<dataset>/<subject>`` like every subject; a name the base model
already has is an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from afo.errors import UserError
from afo.io import atomic_write_text
from afo.training.fit import JobPaths, TrainSpec, build_task, job_data, soup, store_frames, train_model
from afo.training.lightning import pl
from afo.training.modelfile import BackboneRecord, ModelFile, ModelInputs, read_model_file, save_model
from afo.training.monitor import log_to_stderr_unless_configured
from afo.training.resume import Finished, training_lock, write_metrics

log = logging.getLogger(__name__)

FORMAT_AUTO = "auto"
VAL_FRACTION = 0.1  # of a subject's training images held out for validation when it has none (docs/inputs.md)
MIN_VAL_IMAGES = 3  # a subject is scored on validation from 3 images (afo.training.datamodule.ValidationChunks)
MACHINE_KEYS = ("num_workers",)  # train-dict keys from the config's compute section, not from finetune.train


class FinetuneError(UserError):
    """A fine-tuning dataset that does not fit the base model (its backbone, image size or subject names)."""


def check_train_overrides(train: dict[str, Any], where: str = "--train-config") -> dict[str, Any]:
    """The training settings over the base model's own, checked against the schema's ``train_overrides`` (the
    workflow's ``finetune.train``): an unknown key (a typo) or a value out of range is an error, not ignored."""
    from afo.config import validate_section

    return validate_section(dict(train), "train_overrides", where)


def hold_out_validation(subjects: Sequence[Any], seed: int) -> dict[str, int]:
    """Give every subject with fewer than :data:`MIN_VAL_IMAGES` validation images a validation split: 10 % of its
    training images (at least 3), picked with ``seed`` and the subject's key, moved with all their trials.

    ``subjects``: the job's :class:`afo.training.subjects.SubjectData`, changed in place before the loaders are
    built. Returns subject key -> images held out (logged; recorded in the model file's info).
    """
    held = {}
    for s in subjects:
        if s.split_images["val"].size >= MIN_VAL_IMAGES:
            continue
        train_rows = s.split_trials["train"]
        images = np.unique(s.trial_image[train_rows])
        n = max(MIN_VAL_IMAGES, round(VAL_FRACTION * images.size))
        if images.size - n < 1:
            raise FinetuneError(
                f"{s.key}: no validation images and only {images.size} training images, too few to hold "
                f"{n} out for validation; add images or label some as val (trials.csv `split`)"
            )
        rng = np.random.default_rng([seed, zlib.crc32(s.key.encode())])
        moved = np.isin(s.trial_image[train_rows], rng.choice(images, n, replace=False))
        val_rows = np.sort(np.concatenate([s.split_trials["val"], train_rows[moved]]))
        s.split_trials = {**s.split_trials, "train": train_rows[~moved], "val": val_rows}
        s.split_images = {k: np.unique(s.trial_image[rows]) for k, rows in s.split_trials.items()}
        s.train_trials, s.train_images = train_rows[~moved], s.trial_image[train_rows[~moved]]
        held[s.key] = n
        log.warning(
            "%s: fewer than %d validation images; held out %d of its %d training images (%d%%) as validation",
            s.key,
            MIN_VAL_IMAGES,
            n,
            images.size,
            round(100 * VAL_FRACTION),
        )
    return held


@dataclass
class FinetuneSpec:
    """One fine-tuning job: the base model file and the new datasets (dataset name -> prepared store / feature
    cache, the caches computed with the base model's backbone); ``train`` overrides the base model's own
    training settings (the ``train`` section; at least the base's keys are used)."""

    model: str
    stores: dict[str, str]
    features: dict[str, str]
    train: dict[str, Any]

    def train_spec(self, base: ModelFile) -> TrainSpec:
        """The :class:`TrainSpec` of the new subjects' data (the base model's configuration and training settings
        with ``train`` on top)."""
        base_train = json.loads(base.info["spec"])["train"] if "spec" in base.info else {}
        base_train.pop("data_seed", None)  # a stage-0 seed's batch order; here `seed` alone sets init and batches
        return TrainSpec(
            stores=dict(self.stores),
            features=dict(self.features),
            model=base.config.as_dict(),
            train={**base_train, **self.train},
        )

    def digest(self, train_spec: TrainSpec) -> str:
        """The resume folder's name: the data and settings (:meth:`TrainSpec.digest`) and the base model file."""
        st = Path(self.model).stat()
        payload = json.dumps(
            {"job": train_spec.digest(), "base": [self.model, st.st_size, st.st_mtime_ns], "kind": "finetune"}
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def check_features_fit(base: ModelFile, features: dict[str, str], where: str) -> None:
    """Every feature cache was computed with the base model's backbone (same name, layers, resolution, kwargs and
    weights file content), else a :class:`FinetuneError` naming the cache."""
    inputs = base.require_inputs(where)
    mine = inputs.backbone
    for dataset, path in features.items():
        with h5py.File(path, "r") as f:
            theirs = BackboneRecord.from_cache_attrs(dict(f.attrs), str(path))
        same = (
            theirs.name,
            theirs.layers,
            theirs.resolution,
            theirs.model_kwargs,
            theirs.pretrained,
            theirs.weights_sha256,
        ) == (mine.name, mine.layers, mine.resolution, mine.model_kwargs, mine.pretrained, mine.weights_sha256)
        if not same:
            raise FinetuneError(
                f"{path}: features of {dataset} come from backbone {theirs.name} layers {list(theirs.layers)} at "
                f"{theirs.resolution} px ({theirs.weights_source}); the model {where} was trained on {mine.name} layers "
                f"{list(mine.layers)} at {mine.resolution} px ({mine.weights_source}): compute them with its backbone"
            )


def finetune(spec: FinetuneSpec, model_out: str | Path, *, lock_timeout: float | None = None) -> dict:
    """Fit the new datasets' subjects on the frozen core of ``spec.model``; write ``model_out`` (base + new subjects)
    and ``metrics.csv`` beside it. The resumable state lives in ``<model_out folder>/work/<digest>/``."""
    log_to_stderr_unless_configured()
    # How the job uses the machine (the workflow adds compute.num_workers) is not a training setting to check.
    check_train_overrides({k: v for k, v in spec.train.items() if k not in MACHINE_KEYS})
    model_out = Path(model_out)
    base = read_model_file(spec.model)
    base.require_inputs(spec.model)  # a version-1 file has no backbone record to fine-tune with
    check_features_fit(base, spec.features, spec.model)
    train_spec = spec.train_spec(base)
    paths = JobPaths(model_out.parent, model_out.parent / "work" / spec.digest(train_spec))
    with training_lock(paths.work.parent, lock_timeout):
        started = time.time()
        paths.work.mkdir(parents=True, exist_ok=True)
        pl.seed_everything(int(train_spec.train["seed"]), workers=True, verbose=False)
        data = job_data(train_spec)
        held_out = hold_out_validation(data.subjects, int(train_spec.train["seed"]))
        clash = sorted(set(data.coords) & set(base.voxels))
        if clash:
            raise FinetuneError(
                f"subjects {clash} are already in {spec.model}; give the new dataset another name "
                "(dataset.yaml `name`, or the workflow's dataset name)"
            )
        if [tuple(s) for s in data.layer_shapes] != [tuple(s) for s in base.layer_shapes]:
            raise FinetuneError(
                f"the new features have layers {data.layer_shapes}, the model {spec.model} reads {base.layer_shapes}"
            )
        model = base.config.build(base.layer_shapes, data.coords, frames=store_frames(spec.stores))
        core = {k.removeprefix("conv_blocks."): v for k, v in base.state_dict.items() if k.startswith("conv_blocks.")}
        model.conv_blocks.load_state_dict(core)
        model.conv_blocks.requires_grad_(False)  # the trained core stays as it is: only necks and heads learn
        task = build_task(train_spec, model, data)
        finished = Finished.read(paths.work)
        if finished is None:
            finished = train_model(train_spec, task, data, paths)
        else:
            log.info(
                "%s: fine-tuning had finished (%d epochs); rebuilding the soup and the outputs",
                paths.work,
                finished.epochs,
            )
        summary = soup(model, data, finished, paths, task.device)
        new_voxels = {s.key: torch.from_numpy(s.voxels) for s in data.subjects}
        merged = merge_subjects(base, model.cpu(), new_voxels, ModelInputs.of(spec.stores, spec.features, new_voxels))
        merged.info = {
            **summary,
            "epochs": finished.epochs,
            "seconds": round(time.time() - started, 1),
            "finetuned_from": str(spec.model),
            "new_subjects": sorted(new_voxels),
            "held_out_val_images": held_out,
            "spec": json.dumps(asdict(train_spec), sort_keys=True),
            "finetune": json.dumps(asdict(spec), sort_keys=True),
        }
        write_metrics(paths.work / "logs", paths.out / "metrics.csv")
        save_model(model_out, merged)
    return {k: v for k, v in merged.info.items() if k not in ("spec", "finetune")}


def merge_subjects(
    base: ModelFile, new_model, new_voxels: dict[str, torch.Tensor], new_inputs: ModelInputs
) -> ModelFile:
    """One model file with the base model's subjects and the new model's (which shares the base's conv blocks)."""
    coords = {**base.subject_coords, **{k: new_model._neck(k).coords.detach().cpu() for k in new_model.subjects}}
    merged = base.config.build(base.layer_shapes, coords)
    state = dict(base.state_dict)
    state.update({k: v.detach().cpu() for k, v in new_model.state_dict().items() if not k.startswith("conv_blocks.")})
    merged.load_state_dict(state)  # strict: every neck, head and frame of both models, nothing else
    inputs = base.require_inputs("the base model")
    inputs = replace(inputs, subjects={**inputs.subjects, **new_inputs.subjects})
    if new_inputs.preprocessing.image_size != inputs.preprocessing.image_size:
        raise FinetuneError(
            f"the new datasets' stores hold images at {new_inputs.preprocessing.image_size} px, the base model "
            f"was trained on {inputs.preprocessing.image_size} px: prepare them at that image size"
        )
    voxels = {**{k: v for k, v in base.voxels.items()}, **new_voxels}
    return ModelFile.of(merged, base.config, voxels, {}, inputs=inputs)


def prepare_for_model(
    base_path: str | Path,
    dataset: str | Path,
    work: str | Path,
    fmt: str = FORMAT_AUTO,
    options: dict | None = None,
    name: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
) -> tuple[dict, dict]:
    """A user's dataset made ready for :func:`finetune`: (stores, features), each dataset name -> path under ``work``.

    ``dataset`` is a prepared store (``.h5``), a folder dataset (``dataset.yaml``) or, with ``fmt``, a dataset
    in any adapter's format (docs/datasets.md). It is prepared at the base model's image size and its features
    computed with the base model's backbone (its weights file checked against the recorded hash).
    """
    from afo.data.manifest import manifest_digest
    from afo.data.registry import get_adapter
    from afo.data.store import PreparedStore
    from afo.features import extract_features
    from afo.runtime import resolve_device

    base = read_model_file(base_path)
    inputs = base.require_inputs(base_path)
    dataset, work = Path(dataset), Path(work)
    size = inputs.preprocessing.image_size
    if fmt == FORMAT_AUTO:
        if dataset.is_file() and dataset.suffix == ".h5":
            fmt = "store"
        elif (dataset / "dataset.yaml").is_file():
            fmt = "folder"
        else:
            raise FinetuneError(
                f"{dataset}: neither a prepared store (.h5) nor a folder dataset (dataset.yaml); name its "
                "format with --format (docs/datasets.md)"
            )
    if fmt == "store":
        store = dataset
    else:
        store = work / "prepared" / f"{name or dataset.name}.h5"
        # Rebuilt when the dataset's files (or how it is read) changed since it was prepared: never a stale store.
        made_from = {"dataset": str(dataset.resolve()), "format": fmt, "options": options or {}, "image_size": size}
        made_from["files"] = manifest_digest(dataset)
        if not _up_to_date(store, made_from):
            store.parent.mkdir(parents=True, exist_ok=True)
            get_adapter(fmt).prepare(dataset, store, image_size=size, options=options or {})
            _stamp(store, made_from)
    with PreparedStore(store) as s:
        key = name or s.name
        if s.image_size != size:
            raise FinetuneError(
                f"{store}: images at {s.image_size} px, the model {base_path} was trained on {size} px; "
                "prepare the dataset again at that size (or give its folder)"
            )
    features = work / "features" / f"{key}.h5"
    st = store.stat()
    made_from = {"store": str(store.resolve()), "stat": [st.st_size, st.st_mtime_ns], **inputs.backbone.as_dict()}
    if not _up_to_date(features, made_from):
        features.parent.mkdir(parents=True, exist_ok=True)
        extract_features(store, features, inputs.backbone.spec(), batch_size=batch_size, device=resolve_device(device))
        _stamp(features, made_from)
    return {key: str(store)}, {key: str(features)}


def _stamp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.made-from.json")


def _up_to_date(path: Path, made_from: dict[str, Any]) -> bool:
    """Whether ``path`` exists and was made from ``made_from`` (recorded by :func:`_stamp` beside it)."""
    stamp = _stamp_path(path)
    if not (path.is_file() and stamp.is_file()):
        return False
    try:
        return json.loads(stamp.read_text()) == json.loads(json.dumps(made_from))
    except ValueError:  # a stamp cut short by a kill: rebuild
        return False


def _stamp(path: Path, made_from: dict[str, Any]) -> None:
    atomic_write_text(_stamp_path(path), json.dumps(made_from, sort_keys=True))


def finetune_dataset(
    base_path: str | Path,
    dataset: str | Path,
    model_out: str | Path,
    train: dict | None = None,
    fmt: str = FORMAT_AUTO,
    options: dict | None = None,
    name: str | None = None,
    device: str = "auto",
) -> dict:
    """``afo finetune``: :func:`prepare_for_model` then :func:`finetune` (work files beside ``model_out``)."""
    model_out = Path(model_out)
    if model_out.suffix != ".pt":
        raise FinetuneError(f"--out {model_out}: name the model file to write (e.g. my_lab/model.pt)")
    train = check_train_overrides(dict(train or {}))  # before any data is prepared
    stores, features = prepare_for_model(
        base_path, dataset, model_out.parent / "work" / "data", fmt, options, name, device
    )
    return finetune(FinetuneSpec(str(base_path), stores, features, train), model_out)
