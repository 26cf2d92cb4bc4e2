"""One training job on several devices (``compute.train_devices: N``): Lightning DDP with ranks afo starts itself.

The job's own process is rank 0: it holds the job's lock and GPU claim, decides whether to resume, and alone
writes the soup, ``model.pt`` and ``metrics.csv``. :func:`rank_processes` starts ranks 1..N-1 as fresh Python
processes (``python -c ... <work>/ddp.json``) that rebuild the same data, model and trainer
(:func:`afo.training.fit.run_rank`) and only train. Lightning sees ``LOCAL_RANK`` set and launches nothing
(:class:`LightningEnvironment` with processes "created externally"); afo does not let Lightning re-run the
command line instead, because that command line is a Snakemake job script or pytest, whose other work
(claiming GPUs, taking the job's lock, running tests) must happen once.

What each rank does per step: rank r of N takes rows r, r+N, ... of the one-device batch (train.batch_size
trials, voxels sampled for the whole batch; :class:`afo.training.datamodule.MixedBatches`), so every rank has
batch_size / N rows and DDP's mean of the ranks' gradients is the one-device gradient up to float rounding.
An epoch has the same steps as on one device. Validation is not sharded: every rank scores all validation
images with the same weights (the per-voxel r needs all of a subject's images together), so checkpointing,
early stopping and the soup see one score. Checkpoints are written by rank 0 only (Lightning's strategies,
and :class:`afo.training.resume.ResumeCheckpoint`).

All ranks run on one machine (one SLURM node): CPU processes talk over gloo, GPUs over NCCL.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch

from afo.errors import UserError
from afo.io import atomic_write_text
from afo.training.lightning import DDPStrategy, LightningEnvironment

log = logging.getLogger(__name__)

PAYLOAD_NAME = "ddp.json"
# The command a rank process runs; its one argument is the payload file.
_RANK_CODE = "import sys; from afo.training.fit import run_rank; run_rank(sys.argv[1])"
# How long a collective waits for a rank that stopped answering (Lightning's default as well).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
_RANK_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK")


class DevicesError(UserError):
    """``compute.train_devices`` does not fit the job's batch size or the machine."""


def check_devices(devices: int, batch_size: int, gpu: bool) -> None:
    """Refuse a device count that cannot shard the batch evenly or that the machine does not have."""
    if devices < 1:
        raise DevicesError(f"compute.train_devices must be >= 1, got {devices}")
    if batch_size % devices:
        raise DevicesError(
            f"compute.train_devices = {devices} does not divide train.batch_size = {batch_size}: every device "
            "takes an equal share of each batch; choose a device count that divides the batch size"
        )
    if gpu and torch.cuda.device_count() < devices:
        raise DevicesError(
            f"compute.train_devices = {devices} but this job sees {torch.cuda.device_count()} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); run it with "
            f"snakemake --resources gpu={devices} or more, or lower compute.train_devices"
        )


def ddp_settings(devices: int, gpu: bool) -> dict:
    """The Trainer arguments of an N-device job (empty for one device)."""
    if devices == 1:
        return {}
    strategy = DDPStrategy(
        # LOCAL_RANK is set: the ranks exist already (rank_processes), Lightning launches nothing.
        cluster_environment=LightningEnvironment(),
        process_group_backend="nccl" if gpu else "gloo",
        # A rank's share of a mixed batch may hold no trial of some subject: that subject's head gets no
        # gradient on that rank in that step.
        find_unused_parameters=True,
        timeout=COLLECTIVE_TIMEOUT,
    )
    # Batches are sharded by MixedBatches itself; validation is deliberately not sharded (see the module).
    return {"strategy": strategy, "use_distributed_sampler": False}


def free_port() -> int:
    """A TCP port free on this machine now, for the ranks' rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the rank process gets SIGKILL when rank 0 dies (a killed job leaves no rank behind)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a rank whose rank 0 died fails at its next collective instead


def _python_path() -> str:
    """PYTHONPATH for rank processes: this afo first (a source checkout need not be installed), then the caller's."""
    import afo

    here = str(Path(afo.__file__).resolve().parent.parent)
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)


class _Watchdog(threading.Thread):
    """Ends the job when a rank process fails: NCCL would otherwise wait for it until the collective timeout."""

    def __init__(self, procs: dict[int, subprocess.Popen]):
        super().__init__(daemon=True, name="afo-ddp-watchdog")
        self.procs = procs
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            for rank, proc in self.procs.items():
                code = proc.poll()
                if code not in (None, 0) and not self.done.is_set():
                    log.error(
                        "DDP rank %d (pid %d) failed with exit code %s (its traceback is above); stopping the job",
                        rank,
                        proc.pid,
                        code,
                    )
                    for other in self.procs.values():
                        if other.poll() is None:
                            other.kill()
                    sys.stderr.flush()
                    os._exit(1)


@contextmanager
def rank_processes(payload: dict, work: Path, devices: int, threads_per_rank: int) -> Iterator[None]:
    """Run the ``with`` block as rank 0 of ``devices`` ranks; ranks 1..N-1 train beside it (see the module).

    payload: what :func:`afo.training.fit.run_rank` needs (the spec, the job's folders, whether to resume),
    written to ``<work>/ddp.json``. On exit, waits for the other ranks (they finish the same fit) and fails if
    one failed; on an error in rank 0, stops them. Restores this process's environment either way.
    """
    if devices == 1:
        yield
        return
    path = work / PAYLOAD_NAME
    atomic_write_text(path, json.dumps({**payload, "devices": devices, "threads": threads_per_rank}))
    base = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(devices), "NODE_RANK": "0"}
    saved = {var: os.environ.get(var) for var in (*_RANK_ENV, "OMP_NUM_THREADS")}
    # Lightning's DDP sets torch's thread count (and OMP_NUM_THREADS) for the ranks; a later job in this process
    # must run with the threads it had, or its float sums (and so its weights) differ from a one-device run.
    saved_threads = torch.get_num_threads()
    procs: dict[int, subprocess.Popen] = {}
    watchdog = _Watchdog(procs)
    try:
        env = {**os.environ, **base, "PYTHONPATH": _python_path(), "OMP_NUM_THREADS": str(threads_per_rank)}
        for rank in range(1, devices):
            procs[rank] = subprocess.Popen(
                [sys.executable, "-c", _RANK_CODE, str(path)],
                env={**env, "LOCAL_RANK": str(rank)},
                preexec_fn=_die_with_parent,
            )
        log.info(
            "DDP: %d ranks (this process is rank 0; ranks 1-%d are pids %s)",
            devices,
            devices - 1,
            [p.pid for p in procs.values()],
        )
        os.environ.update(base, LOCAL_RANK="0")
        watchdog.start()
        yield
        watchdog.done.set()
        failed = {rank: proc.wait() for rank, proc in procs.items()}
        failed = {rank: code for rank, code in failed.items() if code != 0}
        if failed:
            raise RuntimeError(
                f"DDP rank(s) {sorted(failed)} ended with exit code(s) {sorted(failed.values())}; see their traceback above"
            )
    finally:
        watchdog.done.set()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # a later job in this process starts a fresh group
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        torch.set_num_threads(saved_threads)
