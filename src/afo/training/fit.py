"""One training job, in named steps: its data, its model, training (resumable), the greedy soup, the outputs.

Resumable: the job's Lightning state lives in ``<out_dir>/work/<spec hash>/`` (outside the model file the
workflow declares, which Snakemake deletes before a job starts); see :mod:`afo.training.resume`. Rerunning the
same spec continues from ``last.ckpt``, or, when training had finished, only rebuilds the soup and the outputs;
a changed spec starts afresh in another folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from afo.data.store import PreparedStore
from afo.errors import UserError
from afo.io import atomic_write_text
from afo.io.tables import read_roi_selection, subject_key
from afo.model import EncodingModel, subject_frame
from afo.runtime import resolve_precision
from afo.training.datamodule import TrainingData
from afo.training.ddp import check_devices, ddp_settings, rank_processes
from afo.training.lightning import pl
from afo.training.modelfile import ModelConfig, ModelFile, ModelInputs, load_model, save_model
from afo.training.monitor import EpochLog, job_loggers, log_to_stderr_unless_configured
from afo.training.resume import Finished, ResumeCheckpoint, TopK, training_lock, write_metrics
from afo.training.schedule import learning_rate
from afo.training.soup import soup_checkpoints
from afo.training.task import EncodingTask, validation_score

log = logging.getLogger(__name__)

# Layout of the resume state (afo.training.resume); part of the folder's hash, so a state written in another
# layout is never resumed (2: top-k named by file name, finished.json, one CSV log per attempt).
STATE_FORMAT = 2


@dataclass
class TrainSpec:
    """Everything a training job depends on (its hash names the resume folder).

    stores / features: dataset name -> prepared store / feature cache.
    rois: an ROI assignment table; the model predicts its voxels (all usable voxels when None).
    roi: only this ROI's voxels (stage 1).
    own_roi: ground truth (with target_mode helpers) and checkpointing only on this ROI's voxels (stage 2).
    dark_knowledge: prediction files whose per-image predictions are the helpers' targets (stage 2) or the
    distillation target (stage 3); target_mode says how (see EncodingTask).
    neck_init: a model file whose RetinaMapper/LayerSelector MLPs are loaded (frozen if freeze_neck).
    """

    stores: dict[str, str]
    features: dict[str, str]
    model: dict
    train: dict
    rois: str | None = None
    roi: str | None = None
    own_roi: str | None = None
    dark_knowledge: list[str] = field(default_factory=list)
    target_mode: str = "gt"
    neck_init: str | None = None
    freeze_neck: bool = True
    # backbone.cache none (issue 10): the config's backbone section; features come from the stores' images per batch.
    backbone: dict | None = None

    def input_files(self) -> list[str]:
        files = [*self.stores.values(), *self.features.values(), *self.dark_knowledge]
        return files + [p for p in (self.rois, self.neck_init) if p]

    def digest(self) -> str:
        """Hash of the settings and of the input files' size and modification time: a job whose inputs were
        rebuilt (new veROIs, new features) starts afresh instead of resuming a stale state."""
        stamps = {}
        for path in self.input_files():
            st = Path(path).stat() if Path(path).exists() else None
            stamps[path] = [st.st_size, st.st_mtime_ns] if st else None
        payload = json.dumps({"spec": asdict(self), "inputs": stamps, "state_format": STATE_FORMAT}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class JobPaths:
    """Where one job's outputs and resumable state live (see :mod:`afo.training.resume`)."""

    out: Path  # model.pt, metrics.csv, tensorboard/
    work: Path  # <out>/work/<spec digest>

    @classmethod
    def of(cls, spec: TrainSpec, out_dir: str | Path) -> JobPaths:
        return cls(Path(out_dir), Path(out_dir) / "work" / spec.digest())

    @property
    def topk(self) -> Path:
        return self.work / "topk"

    @property
    def last(self) -> Path:
        return self.work / "last.ckpt"


def store_frames(stores: dict[str, str]) -> dict:
    """Each subject's coordinate frame (subject key -> :class:`afo.model.pe.CoordinateFrame`) over all its usable
    voxels in the prepared store: the same in every job, whichever voxels the job models."""
    frames = {}
    for dataset, path in stores.items():
        with PreparedStore(path) as store:
            for name in store.subjects:
                usable = ~store.bad_voxel(name)
                if usable.any():
                    frames[subject_key(dataset, name)] = subject_frame(store.coords(name)[usable])
    return frames


def _uses_gpu(train: dict) -> bool:
    return torch.cuda.is_available() and train.get("accelerator", "auto") in ("auto", "gpu")


def _trainer_settings(train: dict, devices: int = 1) -> dict:
    gpu = _uses_gpu(train)
    precision = resolve_precision(train.get("precision", "auto"), "cuda" if gpu else "cpu")
    return {
        "accelerator": "gpu" if gpu else "cpu",
        "devices": devices,
        "precision": precision,
        # CUDA grid_sample backward is nondeterministic; on the CPU every run is exactly repeatable.
        "deterministic": "warn" if gpu else True,
        **ddp_settings(devices, gpu),
    }


def job_data(spec: TrainSpec) -> TrainingData:
    """The job's datamodule, set up (the model is built from its subjects and feature shapes)."""
    train = spec.train
    if spec.target_mode != "gt" and not spec.dark_knowledge:
        raise UserError(f"target_mode {spec.target_mode!r} needs dark-knowledge files")
    data = TrainingData(
        spec.stores,
        spec.features,
        batch_size=int(train["batch_size"]),
        max_voxels=int(train["max_voxels"]),
        epoch_fraction=float(train["epoch_fraction"]),
        # data_seed varies the batches while seed fixes the initialisation (stage-0 seeds share their init).
        seed=int(train.get("data_seed", train["seed"])),
        selection=read_roi_selection(spec.rois, spec.roi) if spec.rois else None,
        own=read_roi_selection(spec.rois, spec.own_roi) if spec.own_roi else None,
        dark_knowledge=spec.dark_knowledge,
        num_workers=int(train.get("num_workers", 0)),
        backbone=spec.backbone,
    )
    data.setup("fit")
    return data


def build_model(spec: TrainSpec, data: TrainingData) -> tuple[ModelConfig, EncodingModel]:
    """A freshly initialised model for the job's subjects (with the neck MLPs of ``neck_init``).

    Each subject's coordinate frame comes from all its usable voxels in the store, so every job that models any
    subset of a subject (one ROI in stage 1) reads a loaded neck in the frame it was trained in.
    """
    config = ModelConfig.from_dict(spec.model)
    model = config.build(data.layer_shapes, data.coords, frames=store_frames(spec.stores))
    if spec.neck_init:
        source, _ = load_model(spec.neck_init)
        model.load_neck_mlps(source.neck_mlp_state(), freeze=spec.freeze_neck)
    return config, model


def build_task(spec: TrainSpec, model: EncodingModel, data: TrainingData) -> EncodingTask:
    train = spec.train
    return EncodingTask(
        model,
        data.subjects,
        lr=train["lr"],
        weight_decay=train["weight_decay"],
        betas=train["betas"],
        lambda_entropy=train["lambda_entropy"],
        smoothl1_beta=train["smoothl1_beta"],
        target_mode=spec.target_mode,
        dk_weight=train.get("dk_weight", 0.5),
        own_weight=train.get("own_weight"),
        optimizer=train.get("optimizer", "adabelief"),
        schedule=learning_rate(train, data.batches_per_epoch()),
    )


def _fit_trainer(
    spec: TrainSpec, task: EncodingTask, data: TrainingData, paths: JobPaths, devices: int, resume: Path | None
) -> tuple[pl.Trainer, TopK]:
    """Build the job's trainer and fit (every DDP rank runs this); returns the trainer and its top-k."""
    train = spec.train
    top_k = TopK(
        dirpath=paths.topk,
        filename="epoch{epoch:04d}",
        auto_insert_metric_name=False,
        monitor="val_r",
        mode="max",
        save_top_k=int(train["top_k"]),
        save_weights_only=True,
    )
    stopper = pl.callbacks.EarlyStopping(
        monitor="val_r", mode="max", patience=int(train["patience"]), min_delta=float(train.get("min_delta", 0.0))
    )
    trainer = pl.Trainer(
        max_epochs=int(train["max_epochs"]),
        # Lightning runs checkpoint callbacks last, in this order: the resume state is saved after the top-k update.
        callbacks=[EpochLog("val_r"), stopper, top_k, ResumeCheckpoint(paths.last)],
        logger=job_loggers(paths.work, paths.out / "tensorboard" / paths.work.name),
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),
        log_every_n_steps=max(1, min(50, data.batches_per_epoch())),
        **_trainer_settings(train, devices),
    )
    trainer.fit(task, datamodule=data, ckpt_path=resume, weights_only=True)
    return trainer, top_k


def train_model(spec: TrainSpec, task: EncodingTask, data: TrainingData, paths: JobPaths, devices: int = 1) -> Finished:
    """Fit with Lightning (resuming from ``last.ckpt``) on ``devices`` devices and record the top-k; returns what
    the soup needs. This process is rank 0 of a multi-device job (:mod:`afo.training.ddp`)."""
    resume = paths.last if paths.last.exists() else None
    if resume is None and paths.topk.exists():
        shutil.rmtree(paths.topk)  # checkpoints of an attempt killed before its first resume state
    if resume is not None:
        log.info("resuming from %s", resume)
    threads = torch.get_num_threads()
    # The job's CPU threads are shared by its ranks (on GPUs they feed the data loading and the optimizer).
    per_rank = max(1, threads // devices)
    payload = {"spec": asdict(spec), "out": str(paths.out), "work": str(paths.work), "resume": resume is not None}
    torch.set_num_threads(per_rank)
    try:
        with rank_processes(payload, paths.work, devices, per_rank):
            trainer, top_k = _fit_trainer(spec, task, data, paths, devices, resume)
    finally:
        torch.set_num_threads(threads)
    finished = stopped(trainer, top_k, int(spec.train["max_epochs"]))
    if finished.stop_reason == "max_epochs":
        log.warning(
            "training stopped at its cap (train.max_epochs = %d) with validation r still improving (best at epoch %d, "
            "within the last train.patience = %d epochs): the model has not converged; raise train.max_epochs (or the "
            "stage's afo.stages.<stage>.max_epochs) and rerun",
            finished.epochs, finished.best_epoch, int(spec.train["patience"]),
        )  # fmt: skip
    finished.write(paths.work)
    return finished


def stopped(trainer: pl.Trainer, top_k: TopK, max_epochs: int) -> Finished:
    """What ended a fit: early stopping (``patience``) or the epoch cap (``max_epochs``), with the best epoch
    (1-based, from the top-k checkpoint names ``epochNNNN``, 0-based) and the optimiser steps."""
    scores = top_k.scores()
    best = max(scores, key=scores.get) if scores else None
    epochs = int(trainer.current_epoch)
    return Finished(
        epochs=epochs,
        topk=scores,
        stop_reason="max_epochs" if epochs >= max_epochs else "patience",
        best_epoch=int(Path(best).stem.removeprefix("epoch")) + 1 if best else 0,
        steps=int(trainer.global_step),
    )


def run_rank(payload_path: str) -> None:
    """Rank 1..N-1 of a multi-device job (started by :func:`afo.training.ddp.rank_processes`): rebuild the job's
    data, model and task as rank 0 did, and train; rank 0 alone writes the outputs."""
    log_to_stderr_unless_configured()
    payload = json.loads(Path(payload_path).read_text())
    torch.set_num_threads(int(payload["threads"]))
    spec = TrainSpec(**payload["spec"])
    paths = JobPaths(Path(payload["out"]), Path(payload["work"]))
    pl.seed_everything(int(spec.train["seed"]), workers=True, verbose=False)
    data = job_data(spec)
    _, model = build_model(spec, data)
    task = build_task(spec, model, data)
    _fit_trainer(spec, task, data, paths, int(payload["devices"]), paths.last if payload["resume"] else None)


def soup(model: EncodingModel, data: TrainingData, finished: Finished, paths: JobPaths, device: torch.device) -> dict:
    """Load the greedy soup of the top-k checkpoints, judged on the validation set, into ``model``; its summary."""
    val_loader = data.val_dataloader()

    def held_out(state: dict) -> float:
        model.load_state_dict(state)
        return validation_score(model.to(device), data.on_device(val_loader, device), data.subjects, device)

    state, summary = soup_checkpoints(finished.checkpoints(paths.topk), held_out)
    model.load_state_dict(state)
    return summary


def write_outputs(paths: JobPaths, model_file: ModelFile) -> None:
    """metrics.csv (every attempt's epochs), then model.pt: a model file implies a complete metrics.csv."""
    write_metrics(paths.work / "logs", paths.out / "metrics.csv")
    save_model(paths.out / "model.pt", model_file)


def fit(spec: TrainSpec, out_dir: str | Path, *, lock_timeout: float | None = None, devices: int = 1) -> dict:
    """Train, soup and write ``<out_dir>/model.pt`` and ``<out_dir>/metrics.csv``; returns a report.

    One trainer per ``out_dir`` at a time: a second waits for the first, at most ``lock_timeout`` seconds (None:
    as long as it takes), then fails with :class:`afo.training.resume.TrainingLocked`.

    ``devices`` > 1 trains with DDP on that many GPUs (or CPU processes without a GPU), see
    :mod:`afo.training.ddp`. It changes no result beyond float rounding, so it is not part of the spec: a job
    resumes on another device count, and the workflow reads it from ``compute.train_devices``.
    """
    log_to_stderr_unless_configured()
    check_devices(devices, int(spec.train["batch_size"]), _uses_gpu(spec.train))
    paths = JobPaths.of(spec, out_dir)
    with training_lock(paths.work.parent, lock_timeout):
        started = time.time()
        paths.work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths.work / "spec.json", json.dumps(asdict(spec), indent=2, sort_keys=True))
        pl.seed_everything(int(spec.train["seed"]), workers=True, verbose=False)
        data = job_data(spec)
        config, model = build_model(spec, data)
        task = build_task(spec, model, data)
        finished = Finished.read(paths.work)
        if finished is None:
            finished = train_model(spec, task, data, paths, devices)
        else:
            log.info(
                "%s: training had finished (%d epochs); rebuilding the soup and the outputs",
                paths.work,
                finished.epochs,
            )
        summary = soup(model, data, finished, paths, task.device)
        info = {
            **summary,
            "epochs": finished.epochs,
            "stop_reason": finished.stop_reason,
            "best_epoch": finished.best_epoch,
            "steps": finished.steps,
            "seconds": round(time.time() - started, 1),
            "spec": json.dumps(asdict(spec), sort_keys=True),
        }
        voxels = {s.key: torch.from_numpy(s.voxels) for s in data.subjects}
        # The backbone, preprocessing and subject records make the model file usable on raw images alone.
        inputs = ModelInputs.of(spec.stores, spec.features, voxels, backbone=spec.backbone)
        write_outputs(paths, ModelFile.of(model.cpu(), config, voxels, info, inputs=inputs))
    return {k: v for k, v in info.items() if k != "spec"}
