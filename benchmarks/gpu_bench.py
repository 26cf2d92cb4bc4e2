"""GPU benchmark: timed training steps of one paper-size model, and the projected GPU-hours of the paper recipe.

Run by benchmarks/gpu.sh (which runs the readout benchmark first); on its own:

    PYTHONPATH=src python benchmarks/gpu_bench.py [--tiny] [--out results.json]

Needs only torch, timm, lightning (or pytorch-lightning), h5py, numpy and pyyaml-free afo code: the model and
training modules of afo, with AdaBelief (and the two small packages it imports) taken from the pure-Python
wheels in benchmarks/wheels/ when they are not installed. Nothing is downloaded.

What is measured, per precision (bf16-mixed where the GPU has native bf16, fp16-mixed with loss scaling) and per
backbone mode:

- ``cache: disk``: each step reads 128 images' features (4 x 768 x 16 x 16 float16, ~1.5 MiB per image, the
  feature cache's layout and chunking) from an HDF5 file in DataLoader workers, then trains the paper's model
  (three 5x5 convs at C = 768, D = 256, TopyNeck and heads of 8 subjects, 8000 sampled voxels each);
- ``cache: none``: each step gets 128 uint8 images at 224 px and runs a DINOv2-ViT-B/14-shaped timm backbone
  (random init, frozen, blocks 2, 5, 8, 11 tapped) inside the step before the same model.

A step is Lightning's real training step (afo.training.task.EncodingTask: SmoothL1 + entropy, AdaBelief,
mixed precision); timed after warm-up steps, with the GPU synchronised at both ends of each step. Reported:
step time (median), images/s, the share of wall time waiting for data, peak GPU memory
(torch.cuda.max_memory_allocated), GPU utilisation (nvidia-smi sampled every 100 ms during the timed steps;
torch.cuda.utilization where nvidia-smi is missing). Also the backbone's and the model's forward throughput
(float32, as the features and prediction jobs run).

Projection: benchmarks/results/jobs_paper.json (written on the CPU side by benchmarks/jobs_paper.py from
config/paper.yaml) lists the recipe's jobs with their steps and images (a training job's steps from the measured
passes until early stopping, benchmarks/convergence.py); hours = steps x step time (cache disk,
precision auto) + images / throughput for the features, prediction and dark-knowledge jobs; compared with the
paper's ~300 RTX-2080-Ti hours.

``--tiny``: the same code at toy sizes (a 4-block ViT at 56 px, C = 16, 2 subjects) on whatever device is there,
so that tests/test_gpu_bench.py runs it on the CPU and the script cannot rot.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

# Paper size (section 4.6): features 4 x 768 x 16 x 16 from DINOv2 ViT-B/14 at 224 px, C = 768, D = 256,
# batch 128, 8 subjects x 8000 sampled voxels (of 16,000 each here; NSD subjects have ~39,000).
PAPER = dict(
    backbone="vit_base_patch14_dinov2",
    backbone_kwargs={},
    layers=(2, 5, 8, 11),
    image=224,
    conv=768,
    dim=256,
    kernel=5,
    batch=128,
    subjects=8,
    voxels=16_000,
    max_voxels=8_000,
    readout_chunk=4096,
    feature_images=256,
    workers=4,
    warmup=5,
    steps=20,
)
TINY = dict(
    backbone="vit_small_patch14_dinov2",
    backbone_kwargs={"depth": 4, "embed_dim": 16, "num_heads": 2},
    layers=(0, 1, 2, 3),
    image=56,
    conv=16,
    dim=8,
    kernel=3,
    batch=8,
    subjects=2,
    voxels=60,
    max_voxels=40,
    readout_chunk=None,
    feature_images=32,
    workers=0,
    warmup=1,
    steps=2,
)


def use_shipped_wheels() -> list[str]:
    """Put benchmarks/wheels/*.whl (pure Python: AdaBelief and what it imports) on sys.path when AdaBelief is
    missing; installed packages win (the wheels go last). Returns the modules that were missing."""
    missing = []
    for module in ("adabelief_pytorch", "tabulate", "colorama"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            missing.append(module)
    if missing:
        sys.path.extend(str(w) for w in sorted((HERE / "wheels").glob("*.whl")))
        importlib.invalidate_caches()
    return missing


# -- data ------------------------------------------------------------------------------------------------------


def write_feature_file(path: Path, n_images: int, shape: tuple[int, int, int], n_layers: int) -> None:
    """Random float16 features in the feature cache's layout: /layer_k [n, C, h, w], one image per chunk."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for k in range(n_layers):
            ds = f.create_dataset(f"layer_{k}", shape=(n_images, *shape), dtype=np.float16, chunks=(1, *shape))
            for start in range(0, n_images, 32):
                stop = min(n_images, start + 32)
                ds[start:stop] = rng.standard_normal((stop - start, *shape), dtype=np.float32).astype(np.float16)


class StepData(torch.utils.data.Dataset):
    """Batches of the paper's shape: mixed subjects, ``max_voxels`` sampled voxels each, random targets.

    ``features``: an HDF5 file read per batch (cache: disk), or None: uint8 images for the backbone (cache: none).
    """

    def __init__(self, size: dict, n_steps: int, feature_file: Path | None, images: torch.Tensor | None):
        self.size, self.n_steps, self.feature_file, self.images = size, n_steps, feature_file, images
        self._h5 = None

    def __len__(self) -> int:
        return self.n_steps

    def __getitem__(self, i: int):
        from afo.training.datamodule import Batch

        s = self.size
        rng = np.random.default_rng(i)
        n_rows = self.images.shape[0] if self.images is not None else s["feature_images"]
        rows = np.sort(rng.choice(n_rows, size=s["batch"], replace=n_rows < s["batch"]))
        if self.feature_file is not None:
            import h5py

            if self._h5 is None:  # opened in the worker that reads
                self._h5 = h5py.File(self.feature_file, "r")
            unique, inverse = np.unique(rows, return_inverse=True)
            features = [torch.from_numpy(self._h5[f"layer_{k}"][unique][inverse]) for k in range(len(s["layers"]))]
            batch = Batch(features=features)
        else:
            batch = ImageBatch(features=[], images=self.images[torch.from_numpy(rows)])
        per = s["batch"] // s["subjects"]
        for j in range(s["subjects"]):
            key = f"bench/subj{j:02d}"
            voxels = np.sort(rng.choice(s["voxels"], size=s["max_voxels"], replace=False))
            batch.parts.append((key, j * per, (j + 1) * per if j < s["subjects"] - 1 else s["batch"]))
            stop, start = batch.parts[-1][2], batch.parts[-1][1]
            batch.targets[key] = torch.from_numpy(
                rng.standard_normal((stop - start, s["max_voxels"]), dtype=np.float32)
            )
            batch.voxel_index[key] = torch.from_numpy(voxels)
            batch.own[key] = torch.ones(s["max_voxels"], dtype=torch.bool)
        return batch


def _image_batch_class():
    from afo.training.datamodule import Batch

    @dataclass
    class ImageBatch(Batch):
        """A batch whose features are computed in the step from uint8 images [B, S, S, 3] (cache: none)."""

        images: torch.Tensor | None = None

        def to(self, device: torch.device) -> ImageBatch:
            moved = Batch.to(self, device)
            return ImageBatch(
                moved.features,
                moved.parts,
                moved.targets,
                moved.voxel_index,
                moved.own,
                moved.dk,
                images=self.images.to(device, non_blocking=True),
            )

    return ImageBatch


ImageBatch = None  # bound in main(), once afo.training imports


# -- model and task ----------------------------------------------------------------------------------------------


def build_task(size: dict, layer_shapes: list[tuple[int, int, int]], backbone: torch.nn.Module | None):
    """The paper's model for ``subjects`` subjects in afo's real training task; with ``backbone``, a task that
    computes the features from the batch's images first (cache: none)."""
    from afo.training.modelfile import ModelConfig
    from afo.training.task import EncodingTask

    rng = np.random.default_rng(1)
    coords = {
        f"bench/subj{j:02d}": rng.uniform(-50, 50, (size["voxels"], 3)).astype(np.float32)
        for j in range(size["subjects"])
    }
    config = ModelConfig(
        conv_width=size["conv"], out_dim=size["dim"], kernel_size=size["kernel"], readout_chunk=size["readout_chunk"]
    )
    model = config.build(layer_shapes, coords)
    args = dict(lr=3e-3, weight_decay=1e-4, betas=(0.9, 0.999), lambda_entropy=3e-5, smoothl1_beta=0.01)
    if backbone is None:

        class DiskTask(EncodingTask):
            def transfer_batch_to_device(self, batch, device, dataloader_idx):
                return batch.to(device)

        return DiskTask(model, [], **args)

    from afo.features import _normalisation

    mean, std = _normalisation(backbone)
    layers = list(size["layers"])

    class OnTheFlyTask(EncodingTask):
        """The frozen backbone inside the step: uint8 images -> tapped layers -> the model's training step."""

        def __init__(self) -> None:
            super().__init__(model, [], **args)
            self.backbone = backbone
            self.register_buffer("mean", mean, persistent=False)
            self.register_buffer("std", std, persistent=False)

        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            return batch.to(device)

        def training_step(self, batch, batch_idx):
            self.backbone.eval()
            with torch.no_grad():
                x = (batch.images.permute(0, 3, 1, 2).float().div_(255.0) - self.mean) / self.std
                batch.features = list(
                    self.backbone.forward_intermediates(x, indices=layers, intermediates_only=True, output_fmt="NCHW")
                )
            return super().training_step(batch, batch_idx)

    return OnTheFlyTask()


def create_backbone(size: dict) -> torch.nn.Module:
    from afo.features import BackboneSpec
    from afo.features import create_backbone as create

    return create(
        BackboneSpec(
            size["backbone"],
            layers=tuple(size["layers"]),
            resolution=size["image"],
            model_kwargs=size["backbone_kwargs"],
        )
    )


# -- measuring ---------------------------------------------------------------------------------------------------


class GpuUtilisation:
    """Samples GPU utilisation (percent) every 100 ms while active: nvidia-smi, else torch.cuda.utilization."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.source = device, [], None
        self._proc, self._thread, self._stop = None, None, threading.Event()

    def start(self) -> None:
        if self.device.type != "cuda":
            return
        smi = shutil.which("nvidia-smi")
        if smi:
            self.source = "nvidia-smi"
            index = torch.cuda.current_device()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            physical = visible[index].strip() if index < len(visible) and visible[index].strip() else str(index)
            self._proc = subprocess.Popen(
                [
                    smi,
                    f"--id={physical}",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "100",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
        else:
            try:
                torch.cuda.utilization(self.device)
            except Exception:  # noqa: BLE001 - pynvml missing or unsupported: no utilisation figure
                return
            self.source = "torch.cuda.utilization"
            self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            if self._stop.is_set():
                break
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(float(torch.cuda.utilization(self.device)))

    def stop(self) -> float | None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(2)
        return round(statistics.mean(self.samples), 1) if self.samples else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_timer(device: torch.device, warmup: int, util: GpuUtilisation):
    from afo.training.lightning import pl

    class StepTimer(pl.Callback):
        """Per timed step: compute time (batch start to end, synchronised) and wall time (end to end)."""

        def __init__(self) -> None:
            self.compute, self.wall = [], []
            self._start = self._last_end = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _sync(device)
            self._start = time.perf_counter()
            if batch_idx == warmup:
                util.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(device)
            end = time.perf_counter()
            if batch_idx >= warmup:
                self.compute.append(end - self._start)
                self.wall.append(end - self._last_end)
            self._last_end = end

    return StepTimer()


def time_training(
    size: dict,
    device: torch.device,
    precision: str,
    cache: str,
    feature_file: Path | None,
    layer_shapes: list,
    images: torch.Tensor | None,
    backbone: torch.nn.Module | None,
) -> dict:
    """Real Lightning training steps of the paper-size task; timings, memory and utilisation."""
    from afo.training.lightning import pl

    torch.manual_seed(0)
    task = build_task(size, layer_shapes, backbone if cache == "none" else None)
    n = size["warmup"] + size["steps"]
    data = StepData(size, n, feature_file if cache == "disk" else None, images if cache == "none" else None)
    workers = size["workers"] if cache == "disk" else 0
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    util = GpuUtilisation(device)
    timer = _step_timer(device, size["warmup"], util)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=n,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        trainer.fit(task, train_dataloaders=loader)
    except torch.OutOfMemoryError as err:
        util.stop()
        return {"precision": precision, "cache": cache, "error": f"out of memory: {str(err).splitlines()[0]}"}
    utilisation = util.stop()
    compute, wall = statistics.median(timer.compute), statistics.median(timer.wall)
    result = {
        "precision": precision,
        "cache": cache,
        "steps_timed": len(timer.compute),
        "step_s": round(wall, 5),
        "compute_s": round(compute, 5),
        "images_per_s": round(size["batch"] / wall, 1),
        "data_wait_share": round(max(0.0, 1 - sum(timer.compute) / sum(timer.wall)), 3),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "gpu_util_percent": utilisation,
        "gpu_util_source": util.source,
    }
    del trainer, task
    return result


@torch.no_grad()
def time_forward(fn, batch: int, device: torch.device, repeats: int) -> float:
    """Images per second of ``fn()`` (one batch), median over ``repeats`` after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


# -- projection --------------------------------------------------------------------------------------------------


def project(jobs: dict, step_s: float, backbone_img_s: float, model_img_s: float) -> dict:
    """GPU-hours of the recipe in ``jobs`` (benchmarks/results/jobs_paper.json) at the measured speeds."""
    train = [r for r in jobs["rules"].values() if r["kind"] == "train"]
    train_steps = sum(r["jobs"] * r["steps_per_job"] for r in train)
    hours = {
        "train": train_steps * step_s / 3600,
        "features": sum(r["images_total"] for r in jobs["rules"].values() if r["kind"] == "backbone")
        / backbone_img_s
        / 3600,
        "predict_and_dark_knowledge": sum(
            r["jobs"] * r["images_per_job"] for r in jobs["rules"].values() if r["kind"] == "forward"
        )
        / model_img_s
        / 3600,
    }
    total = sum(hours.values())
    per_epoch = sum(r["jobs"] for r in train) * jobs["steps_per_epoch"] * step_s / 3600
    return {
        "hours": {k: round(v, 2) for k, v in hours.items()},
        "total_hours": round(total, 1),
        "train_steps": train_steps,
        "training_hours_per_epoch_of_every_job": round(per_epoch, 3),
        "job_length": jobs.get("job_length", f"assumed: {jobs.get('epochs_assumed')} epochs per training job"),
        "paper_gpu_hours": jobs["paper_gpu_hours"],
        "ratio_to_paper": round(total / jobs["paper_gpu_hours"], 3),
    }


# -- main ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    global ImageBatch
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy sizes on any device (the CPU test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--jobs",
        type=Path,
        default=HERE / "results" / "jobs_paper.json",
        help="the job list (benchmarks/jobs_paper.py)",
    )
    p.add_argument("--out", type=Path, help="write the results here as JSON")
    p.add_argument("--steps", type=int, help="timed steps per configuration")
    a = p.parse_args(argv)
    size = dict(TINY if a.tiny else PAPER)
    if a.steps:
        size["steps"] = a.steps
    device = torch.device(a.device)
    wheels = use_shipped_wheels()
    ImageBatch = _image_batch_class()
    from afo.runtime import cuda_bf16_native
    from afo.training.lightning import pl

    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)} ({torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB)"
        precisions = (["bf16-mixed"] if cuda_bf16_native() else []) + ["16-mixed"]
        auto = precisions[0]
    else:
        machine = f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
        precisions, auto = ["bf16-mixed", "32-true"], "32-true"  # fp16 autocast does not run on the CPU
    print(
        f"machine: {machine}; torch {torch.__version__}; lightning {pl.__version__}; python {platform.python_version()}"
    )
    if wheels:
        print(f"from benchmarks/wheels: {', '.join(wheels)}")
    label = "TINY (toy sizes, not the paper's)" if a.tiny else "paper size"
    print(
        f"size: {label}: features {len(size['layers'])} x C x {size['image'] // 14}^2 from {size['backbone']} at {size['image']} px, "
        f"conv C={size['conv']}, D={size['dim']}, batch {size['batch']}, {size['subjects']} subjects x {size['max_voxels']} voxels"
    )

    backbone = create_backbone(size).to(device)
    x = torch.zeros(1, 3, size["image"], size["image"], device=device)
    with torch.no_grad():
        layer_shapes = [
            tuple(f.shape[1:])
            for f in backbone.forward_intermediates(
                x, indices=list(size["layers"]), intermediates_only=True, output_fmt="NCHW"
            )
        ]
    per_image_mib = sum(math.prod(s) for s in layer_shapes) * 2 / 2**20
    print(
        f"features per image: {len(layer_shapes)} x {layer_shapes[0]} float16 = {per_image_mib:.2f} MiB; "
        f"a batch: {per_image_mib * size['batch']:.0f} MiB"
    )

    results: dict = {
        "machine": machine,
        "torch": torch.__version__,
        "tiny": a.tiny,
        "size": {k: v for k, v in size.items()},
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        feature_file = Path(tmp) / "features.h5"
        write_feature_file(feature_file, size["feature_images"], layer_shapes[0], len(layer_shapes))
        images = torch.from_numpy(
            np.random.default_rng(2).integers(
                0, 256, (size["feature_images"], size["image"], size["image"], 3), dtype=np.uint8
            )
        )
        for cache in ("disk", "none"):
            for precision in precisions:
                r = time_training(size, device, precision, cache, feature_file, layer_shapes, images, backbone)
                results["runs"].append(r)
                if "error" in r:
                    print(f"cache: {cache:4s} {precision:10s} {r['error']}")
                    continue
                mem = f"{r['peak_gpu_mib']} MiB" if r["peak_gpu_mib"] is not None else "n/a (CPU)"
                util = (
                    f"{r['gpu_util_percent']}% ({r['gpu_util_source']})" if r["gpu_util_percent"] is not None else "n/a"
                )
                print(
                    f"cache: {cache:4s} {precision:10s} step {r['step_s'] * 1000:8.1f} ms  {r['images_per_s']:8.1f} images/s  "
                    f"waiting for data {r['data_wait_share'] * 100:4.1f}%  peak GPU memory {mem}  GPU utilisation {util}",
                    flush=True,
                )

    # Throughput of the float32 forward passes the features and prediction jobs run.
    batch = size["batch"]
    imgs = torch.rand(batch, 3, size["image"], size["image"], device=device)
    backbone_img_s = time_forward(
        # The backbone is deleted after this call, not before it.
        lambda: backbone.forward_intermediates(imgs, indices=list(size["layers"]), intermediates_only=True),  # noqa: F821
        batch,
        device,
        3,
    )
    del backbone
    task = build_task(size, layer_shapes, None).to(device).eval()
    feats = [torch.randn(batch, *s, device=device) for s in layer_shapes]
    model_img_s = time_forward(lambda: task.model.core(feats), batch, device, 3)
    results["forward_images_per_s"] = {
        "backbone_fp32": round(backbone_img_s, 1),
        "model_core_fp32": round(model_img_s, 1),
    }
    print(f"forward (float32): backbone {backbone_img_s:.1f} images/s, model conv blocks {model_img_s:.1f} images/s")

    jobs = json.loads(a.jobs.read_text())
    disk = {r["precision"]: r for r in results["runs"] if r["cache"] == "disk" and "error" not in r}
    none = {r["precision"]: r for r in results["runs"] if r["cache"] == "none" and "error" not in r}
    results["projection"] = {}
    for name, runs in (("cache_disk", disk), ("cache_none", none)):
        for precision, r in runs.items():
            proj = project(jobs, r["step_s"], backbone_img_s, model_img_s)
            if name == "cache_none":
                proj["hours"]["features"] = 0.0  # the backbone runs inside every step instead
                proj["total_hours"] = round(sum(proj["hours"].values()), 1)
                proj["ratio_to_paper"] = round(proj["total_hours"] / jobs["paper_gpu_hours"], 3)
            results["projection"][f"{name}/{precision}"] = proj
    main_key = f"cache_disk/{auto}"
    if main_key in results["projection"]:
        proj = results["projection"][main_key]
        if a.tiny:
            print("projection from the toy sizes (it only shows the arithmetic runs; the numbers mean nothing):")
        print(
            f"projection ({jobs['config']}, cache: disk, {auto}): {proj['train_steps']:,} training steps "
            f"(job length {proj['job_length']}) -> {proj['total_hours']} GPU-hours on this machine "
            f"(train {proj['hours']['train']}, features {proj['hours']['features']}, prediction + dark knowledge "
            f"{proj['hours']['predict_and_dark_knowledge']}); {proj['training_hours_per_epoch_of_every_job']} h per epoch "
            f"of every training job; the paper: ~{jobs['paper_gpu_hours']} h on {jobs['paper_gpu']}"
        )
    for key, proj in results["projection"].items():
        if key != main_key:
            print(f"  {key}: {proj['total_hours']} GPU-hours")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
