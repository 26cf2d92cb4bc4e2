"""One training job: build the model, fit it with Lightning, soup the top-k checkpoints, save the model file.

Resumable: the job's Lightning state lives in ``<out_dir>/work/<spec hash>/`` (outside the model file the
workflow declares, which Snakemake deletes before a job starts). Rerunning the same spec continues from
``last.ckpt``; a changed spec starts afresh in another folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch

from afo.data.store import PreparedStore
from afo.io.tables import read_roi_selection, subject_key
from afo.model import EncodingModel, subject_frame
from afo.runtime import resolve_precision
from afo.training.checkpoint import greedy_soup, load_model, save_model
from afo.training.data import (
    EpochSampler,
    FeatureBank,
    MixedBatches,
    attach_dark_knowledge,
    load_subjects,
)
from afo.training.module import EncodingTask, validation_score

log = logging.getLogger(__name__)

MODEL_KEYS = (
    "conv_width", "out_dim", "n_convs", "kernel_size", "pe_frequencies", "pe_max_period", "mlp_width",
    "sigma", "retina_mapper", "layer_selector", "global_pool", "readout_chunk",
)


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
        payload = json.dumps({"spec": asdict(self), "inputs": stamps}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ResumeCheckpoint(pl.Callback):
    """Writes the full training state (weights, optimizer, loops, callbacks) at the end of every epoch,
    atomically (tmp + rename), so a job killed at any moment resumes from its last finished epoch.

    Listed after the other callbacks so that their end-of-epoch state (early stopping) is in the file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)
        os.replace(tmp, self.path)


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


def _trainer_settings(train: dict) -> dict:
    gpu = torch.cuda.is_available() and train.get("accelerator", "auto") in ("auto", "gpu")
    precision = resolve_precision(train.get("precision", "auto"), "cuda" if gpu else "cpu")
    return {
        "accelerator": "gpu" if gpu else "cpu",
        "devices": 1,
        "precision": precision,
        # CUDA grid_sample backward is nondeterministic; on the CPU every run is exactly repeatable.
        "deterministic": "warn" if gpu else True,
    }


def fit(spec: TrainSpec, out_dir: str | Path) -> dict:
    """Train, soup and write ``<out_dir>/model.pt`` and ``<out_dir>/metrics.csv``; returns a report."""
    out_dir = Path(out_dir)
    work = out_dir / "work" / spec.digest()
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(json.dumps(asdict(spec), indent=2, sort_keys=True))
    train = spec.train
    pl.seed_everything(int(train["seed"]), workers=True, verbose=False)
    started = time.time()

    selection = read_roi_selection(spec.rois, spec.roi) if spec.rois else None
    own = read_roi_selection(spec.rois, spec.own_roi) if spec.own_roi else None
    subjects = load_subjects(spec.stores, selection=selection, own=own)
    bank = FeatureBank(spec.features)
    if spec.dark_knowledge:
        attach_dark_knowledge(subjects, spec.dark_knowledge, {d: bank.n_images(d) for d in spec.features})
    elif spec.target_mode != "gt":
        raise ValueError(f"target_mode {spec.target_mode!r} needs dark-knowledge files")

    model_args = {k: spec.model[k] for k in MODEL_KEYS if k in spec.model}
    # Each subject's coordinate frame comes from all its usable voxels in the store, so every job that models any
    # subset of a subject (one ROI in stage 1) reads a loaded neck in the frame it was trained in.
    model = EncodingModel(bank.layer_shapes, {s.key: s.coords for s in subjects}, frames=store_frames(spec.stores), **model_args)
    if spec.neck_init:
        source, _ = load_model(spec.neck_init)
        model.load_neck_mlps(source.neck_mlp_state(), freeze=spec.freeze_neck)

    task = EncodingTask(
        model, bank, subjects,
        lr=train["lr"], weight_decay=train["weight_decay"], betas=train["betas"],
        lambda_entropy=train["lambda_entropy"], smoothl1_beta=train["smoothl1_beta"],
        target_mode=spec.target_mode, dk_weight=train.get("dk_weight", 0.5),
    )
    # data_seed varies the batches while seed fixes the initialisation (stage-0 seeds share their init).
    batches = MixedBatches(subjects, bank, train["batch_size"], train["max_voxels"], seed=int(train.get("data_seed", train["seed"])))
    sampler = EpochSampler(batches.n_trials, train["batch_size"], train["epoch_fraction"])
    loader = torch.utils.data.DataLoader(
        batches, sampler=sampler, batch_size=None, num_workers=train.get("num_workers", 0),
        persistent_workers=train.get("num_workers", 0) > 0,
    )
    val_loader = torch.utils.data.DataLoader([0], batch_size=None)

    top_k = pl.callbacks.ModelCheckpoint(
        dirpath=work / "topk", filename="epoch{epoch:04d}", auto_insert_metric_name=False,
        monitor="val_r", mode="max", save_top_k=int(train["top_k"]), save_weights_only=True,
    )
    last_cb = ResumeCheckpoint(work / "last.ckpt")
    stopper = pl.callbacks.EarlyStopping(monitor="val_r", mode="max", patience=int(train["patience"]))
    logger = pl.loggers.CSVLogger(work, name="logs", version=0)
    trainer = pl.Trainer(
        max_epochs=int(train["max_epochs"]),
        callbacks=[top_k, stopper, last_cb],
        logger=logger,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),
        log_every_n_steps=max(1, min(50, sampler.n_batches)),
        **_trainer_settings(train),
    )
    resume = work / "last.ckpt"
    if resume.exists():
        print(f"resuming from {resume}", file=sys.stderr)
    trainer.fit(task, loader, val_loader, ckpt_path=str(resume) if resume.exists() else None, weights_only=True)

    # Greedy soup of the top-k checkpoints, judged on the validation set.
    device = task.device
    candidates = []
    for path, score in top_k.best_k_models.items():
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        candidates.append((float(score), {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}))

    def held_out(state: dict) -> float:
        model.load_state_dict(state)
        return validation_score(model.to(device), bank, subjects, device)

    soup_state, members, soup_score = greedy_soup(candidates, held_out)
    model.load_state_dict(soup_state)
    scores = sorted((c[0] for c in candidates), reverse=True)
    info = {
        "val_r": soup_score,
        "val_r_best_checkpoint": scores[0],
        "soup_members": len(members),
        "candidates": len(candidates),
        "epochs": int(trainer.current_epoch),
        "seconds": round(time.time() - started, 1),
        "spec": json.dumps(asdict(spec), sort_keys=True),
    }
    save_model(out_dir / "model.pt", model.cpu(), model_args, {s.key: torch.from_numpy(s.voxels) for s in subjects}, info)
    _write_metrics(work / "logs" / "version_0" / "metrics.csv", out_dir / "metrics.csv")
    return {k: v for k, v in info.items() if k != "spec"}


def _write_metrics(source: Path, dest: Path) -> None:
    """Per-epoch validation r (and mean train loss) from Lightning's CSV log, one row per epoch."""
    import pandas as pd

    if not source.exists():
        pd.DataFrame(columns=["epoch", "val_r", "train_loss"]).to_csv(dest, index=False)
        return
    log_df = pd.read_csv(source)
    cols = [c for c in ("val_r", "train_loss") if c in log_df]
    log_df.groupby("epoch")[cols].mean().reset_index().to_csv(dest, index=False)
