"""Scale benchmark: a training job's memory and data throughput at 1x, 4x and 16x the number of images.

For each size it writes an NSD-shaped synthetic prepared store and feature cache directly, in the real layouts
(random arrays through :class:`afo.data.store.StoreWriter`; the cache as ``afo features`` writes it): 8 subjects of
15,000 voxels; per subject its own images (10 % val, the rest train, one trial each) and test images shared by all
subjects, shown 3 times; features 4 layers x 256 channels x 16 x 16 float16 (the paper's grid and layer count, a third
of its 768 channels, so that 16x stays a ~9 GiB benchmark). Then, in a fresh process (its memory is its own):

1. **loader**: the training DataLoader alone (``--workers`` worker processes), first on a cold page cache (the
   inputs' pages are dropped with ``posix_fadvise`` after writing; nothing else's), then the same batches warm;
2. **train**: ``--steps`` real training steps of the real datamodule and task (Lightning, AdaBelief), then one
   validation pass (streamed r over every validation image);
3. **predict**: one prediction pass (``afo.training.predict.predict_file``) over every val and test image.

Reported per phase: the peak of the *anonymous* memory summed over the job's process and its DataLoader workers
(``Pss_Anon`` from ``/proc/<pid>/smaps_rollup``, which splits copy-on-write pages shared with the parent between
them; the sum of ``RssAnon``, which counts them in every worker, is given too), file-backed pages apart (``Pss_File``:
the memory-mapped inputs, page cache the kernel can drop); steps/s; the share of step time spent waiting for data;
the loader's throughput in MiB/s against what a paper-size GPU step needs (128 images x 4 x 768 x 16 x 16 float16
= 192 MiB of features). Target: the train phase's anonymous memory at 16x within 1.3x of 1x. The inputs of each
size are deleted after it.

    nice python benchmarks/scale.py                   # 1x, 4x, 16x (~12 GiB written in all, ~15 min on 2 cores)
    python benchmarks/scale.py --tiny --out /tmp/s    # seconds: what the test suite runs so this cannot rot
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
PAPER_STEP_BYTES = 128 * 4 * 768 * 16 * 16 * 2  # one paper-size batch of cached features (192 MiB)


@dataclass(frozen=True)
class Shape:
    """An NSD-shaped dataset at 1x (``scale`` multiplies the images, and with them the trials)."""

    subjects: int = 8
    voxels: int = 15_000
    own_images: int = 120  # per subject at 1x: train + val, one trial each (NSD: ~9,000, three trials)
    val_share: float = 0.1
    test_images: int = 16  # shared by every subject at 1x (NSD: 1,000)
    repeats: int = 3  # trials per test image
    layers: int = 4
    channels: int = 256
    grid: int = 16
    image_size: int = 16  # stored stimuli (cache disk: no job reads them)
    # The job: batch, sampled voxels per subject and a small model (the data path is measured, not the conv blocks).
    batch: int = 32
    max_voxels: int = 1000
    steps: int = 20
    loader_batches: int = 20
    model: tuple = (
        ("conv_width", 32),
        ("out_dim", 32),
        ("n_convs", 1),
        ("kernel_size", 1),
        ("pe_frequencies", 8),
        ("mlp_width", 32),
        ("sigma", 0.01),
    )


TINY = Shape(
    subjects=2,
    voxels=300,
    own_images=24,
    test_images=6,
    channels=8,
    grid=4,
    batch=8,
    max_voxels=100,
    steps=3,
    loader_batches=3,
)


# -- inputs ---------------------------------------------------------------------------------------------------


def write_inputs(root: Path, shape: Shape, scale: int, seed: int = 0) -> dict:
    """The store and feature cache of one size under ``root``; returns their sizes and counts."""
    import h5py

    from afo.data.store import StoreWriter
    from afo.features import FEATURES_FORMAT_VERSION

    rng = np.random.default_rng(seed)
    n_test, n_own = shape.test_images * scale, shape.own_images * scale
    n_images = n_test + shape.subjects * n_own
    s = shape.image_size
    store = root / "nsdlike.h5"
    with StoreWriter(store, name="nsdlike", modality="fmri", source="benchmarks/scale.py", image_size=s) as w:
        pool = rng.integers(0, 256, size=(256, s, s, 3), dtype=np.uint8)
        w.write_images((pool[i % 256] for i in range(n_images)), [f"img{i:06d}" for i in range(n_images)])
        for k in range(shape.subjects):
            own = n_test + k * n_own + np.arange(n_own)
            n_val = max(3, int(round(shape.val_share * n_own)))
            images = np.concatenate([np.repeat(np.arange(n_test), shape.repeats), own])
            split = np.concatenate(
                [np.full(n_test * shape.repeats, "test"), np.full(n_val, "val"), np.full(n_own - n_val, "train")]
            )
            order = rng.permutation(images.size)  # trials interleaved, as in a session
            sub = w.subject(f"subj{k + 1:02d}", shape.voxels)
            for start in range(0, order.size, 512):
                rows = order[start : start + 512]
                sub.append(rng.standard_normal((rows.size, shape.voxels), dtype=np.float32), images[rows], split[rows])
            sub.finish(coords=rng.uniform(-40, 40, size=(shape.voxels, 3)).astype(np.float32))
    cache = root / "nsdlike_features.h5"
    feat = (shape.channels, shape.grid, shape.grid)
    pool = rng.standard_normal((64, *feat), dtype=np.float32).astype(np.float16)
    with h5py.File(cache, "w") as f:
        for layer in range(shape.layers):
            ds = f.create_dataset(f"layer_{layer}", shape=(n_images, *feat), dtype=np.float16, chunks=(1, *feat))
            for start in range(0, n_images, 64):
                stop = min(n_images, start + 64)
                ds[start:stop] = np.roll(pool, int(rng.integers(64)), axis=0)[: stop - start]
        f.attrs.update(
            backbone="synthetic",
            layers=json.dumps(list(range(shape.layers))),
            resolution=224,
            pretrained_source="random",
            model_kwargs="{}",
            store=str(store),
            n_images=n_images,
            format_version=FEATURES_FORMAT_VERSION,
        )
    for path in (store, cache):  # start cold: the pages of these files (only) leave the page cache
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return {
        "images": n_images,
        "trials_per_subject": n_test * shape.repeats + n_own,
        "store_bytes": store.stat().st_size,
        "features_bytes": cache.stat().st_size,
    }


# -- memory ---------------------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (DataLoader workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return out


def _memory(pid: int) -> dict[str, int]:
    """kB summed over the process tree: Pss_Anon, Pss_File (smaps_rollup), RssAnon, RssFile (status)."""
    total = {"pss_anon": 0, "pss_file": 0, "rss_anon": 0, "rss_file": 0, "processes": 0}
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    key, _, value = line.partition(":")
                    if key in ("Pss_Anon", "Pss_File"):
                        total["pss_" + key[4:].lower()] += int(value.split()[0])
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    key, _, value = line.partition(":")
                    if key in ("RssAnon", "RssFile"):
                        total["rss_" + key[3:].lower()] += int(value.split()[0])
            total["processes"] += 1
        except OSError:  # a worker that just exited
            pass
    return total


class PeakMemory:
    """Samples :func:`_memory` of this process tree every ``interval`` s in a thread; peaks per phase.

    Reading smaps_rollup walks the page tables of the mapped inputs, so it is sampled at 4 Hz, not faster.
    """

    def __init__(self, interval: float = 0.25):
        self.interval, self.phase, self.peaks = interval, "setup", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        now = _memory(os.getpid())
        peak = self.peaks.setdefault(self.phase, dict(now))
        for k, v in now.items():
            peak[k] = max(peak[k], v)

    def start(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.sample()

    def stop(self) -> dict:
        self.sample()
        self._stop.set()
        self._thread.join()
        return self.peaks


# -- one size, in its own process -----------------------------------------------------------------------------


def run_size(root: Path, shape: Shape, workers: int) -> dict:
    """Loader, training steps and a prediction pass on the inputs under ``root`` (see the module docstring)."""
    import pytorch_lightning as pl
    import torch

    from afo.training.datamodule import TrainingData
    from afo.training.modelfile import ModelConfig, ModelFile, save_model
    from afo.training.predict import predict_file
    from afo.training.task import EncodingTask

    memory = PeakMemory()
    stores, caches = {"nsdlike": str(root / "nsdlike.h5")}, {"nsdlike": str(root / "nsdlike_features.h5")}
    trials = None
    data = TrainingData(
        stores,
        caches,
        batch_size=shape.batch,
        max_voxels=shape.max_voxels,
        epoch_fraction=1.0,
        seed=0,
        num_workers=workers,
    )
    data.setup("fit")
    trials = sum(len(s.train_images) for s in data.subjects)
    # An epoch of exactly `steps` batches, then one validation pass.
    data.epoch_fraction = shape.steps * shape.batch / trials

    memory.start("loader")
    loader = {}
    for label in ("cold", "warm"):
        it, nbytes, started = iter(data.train_dataloader()), 0, None
        for i in range(shape.loader_batches + 1):
            batch = next(it, None)
            if batch is None:
                break
            if i == 0:  # worker start-up and the first batch are not throughput
                started = time.perf_counter()
                continue
            nbytes += sum(f.nbytes for f in batch.features) + sum(t.nbytes for t in batch.targets.values())
        seconds = time.perf_counter() - started
        n = max(1, i)
        loader[label] = {"MiB_per_s": nbytes / MiB / seconds, "images_per_s": n * shape.batch / seconds, "batches": n}
        del it

    memory.start("train")
    torch.manual_seed(0)
    config = ModelConfig.from_dict(dict(shape.model))
    model = config.build(data.layer_shapes, data.coords)
    task = EncodingTask(
        model, data.subjects, lr=3e-3, weight_decay=1e-4, betas=(0.9, 0.999), lambda_entropy=3e-5, smoothl1_beta=0.01
    )

    class StepClock(pl.Callback):
        def __init__(self):
            self.waits, self.steps, self._end, self._start = [], [], None, None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self._start = time.perf_counter()
            if self._end is not None:
                self.waits.append(self._start - self._end)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self._end = time.perf_counter()
            self.steps.append(self._end - self._start)

    clock = StepClock()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    started = time.perf_counter()
    trainer.fit(task, datamodule=data)
    train_seconds = time.perf_counter() - started
    # waits[k] is the wait before step k + 2; the first step (worker start-up) is left out.
    waits, steps = np.asarray(clock.waits), np.asarray(clock.steps[1:])

    memory.start("predict")
    model_path = root / "model.pt"
    save_model(
        model_path, ModelFile.of(model.cpu(), config, {s.key: torch.from_numpy(s.voxels) for s in data.subjects}, {})
    )
    started = time.perf_counter()
    report = predict_file(
        model_path, stores, caches, ["val", "test"], root / "predictions.h5", dtype="float32", num_workers=workers
    )
    predict_seconds = time.perf_counter() - started
    peaks = memory.stop()
    return {
        "train_trials": trials,
        "loader": loader,
        "steps": len(clock.steps),
        "steps_per_s": float(1.0 / np.mean(steps + waits)) if steps.size else float("nan"),
        "wait_share": float(waits.sum() / (waits.sum() + steps.sum())) if steps.size else float("nan"),
        "train_seconds": train_seconds,
        "val_r": float(trainer.callback_metrics["val_r"]) if "val_r" in trainer.callback_metrics else None,
        "predict_images": report["images"],
        "predict_seconds": predict_seconds,
        "peaks_kB": peaks,
    }


# -- the whole benchmark --------------------------------------------------------------------------------------


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as fh:
        mem = int(fh.readline().split()[1]) / (1 << 20)
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM"


def table(results: list[dict]) -> str:
    """The Markdown table of RESULTS.md."""
    lines = [
        "| size | images | inputs GiB | anon MiB (Pss, train) | anon MiB (Pss, predict) | sum RssAnon MiB (train) | file-backed MiB (Pss, train) "
        "| steps/s | wait for data | loader cold MiB/s | loader warm MiB/s | predict img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t, p = r["peaks_kB"]["train"], r["peaks_kB"]["predict"]
        lines.append(
            f"| {r['scale']}x | {r['images']:,} | {(r['store_bytes'] + r['features_bytes']) / (1 << 30):.2f} "
            f"| {t['pss_anon'] / 1024:.0f} | {p['pss_anon'] / 1024:.0f} | {t['rss_anon'] / 1024:.0f} | {t['pss_file'] / 1024:.0f} "
            f"| {r['steps_per_s']:.2f} | {r['wait_share']:.0%} | {r['loader']['cold']['MiB_per_s']:.0f} "
            f"| {r['loader']['warm']['MiB_per_s']:.0f} | {r['predict_images'] / r['predict_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="1,4,16", help="comma-separated multiples of the 1x image count")
    p.add_argument(
        "--tiny", action="store_true", help="a tiny shape (2 subjects, 300 voxels): seconds; for the test suite"
    )
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the job (compute.num_workers)")
    p.add_argument(
        "--out", type=Path, default=Path("scale-benchmark"), help="folder for the inputs (deleted) and results.json"
    )
    p.add_argument("--keep", action="store_true", help="keep each size's inputs")
    p.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # internal: one size in a fresh process
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run:
        shape = Shape(**{k: tuple(map(tuple, v)) if k == "model" else v for k, v in json.loads(args.shape).items()})
        print("RESULT " + json.dumps(run_size(args.run, shape, args.workers)))
        return 0
    shape = TINY if args.tiny else Shape()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for scale in [int(x) for x in args.sizes.split(",")]:
        root = args.out / f"{scale}x"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        started = time.perf_counter()
        sizes = write_inputs(root, shape, scale)
        print(
            f"{scale}x: wrote {(sizes['store_bytes'] + sizes['features_bytes']) / (1 << 30):.2f} GiB "
            f"({sizes['images']} images) in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--run",
                str(root),
                "--workers",
                str(args.workers),
                "--shape",
                json.dumps(asdict(shape)),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
            return proc.returncode
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        result = {"scale": scale, **sizes, **json.loads(line[len("RESULT ") :])}
        results.append(result)
        print(
            f"{scale}x: train anon {result['peaks_kB']['train']['pss_anon'] / 1024:.0f} MiB, "
            f"{result['steps_per_s']:.2f} steps/s, wait {result['wait_share']:.0%}",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(root)
    base = results[0]["peaks_kB"]["train"]["pss_anon"]
    summary = {
        "machine": _machine(),
        "shape": asdict(replace(shape)),
        "workers": args.workers,
        "paper_step_MiB": PAPER_STEP_BYTES / MiB,
        "results": results,
        "anon_ratio_largest_vs_smallest": results[-1]["peaks_kB"]["train"]["pss_anon"] / base,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(table(results))
    print(
        f"train-phase anonymous memory, {results[-1]['scale']}x / {results[0]['scale']}x: "
        f"{summary['anon_ratio_largest_vs_smallest']:.2f} (target <= 1.3)"
    )
    warm = results[-1]["loader"]["warm"]["MiB_per_s"]
    print(
        f"loader at {results[-1]['scale']}x: {warm:.0f} MiB/s warm = one paper-size step of features "
        f"({PAPER_STEP_BYTES / MiB:.0f} MiB) every {PAPER_STEP_BYTES / MiB / warm:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
