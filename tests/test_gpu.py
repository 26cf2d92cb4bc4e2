"""GPU slot claiming (afo.gpu): file locks under concurrency, killed holders, SLURM, CPU-only, timeouts.

No GPU is needed: ``n_gpus`` is passed explicitly (or detection is faked), and claim_gpu only ever sets
environment variables, never touches CUDA. Worker processes are forked (fast, and the test module's
functions need no pickling); each worker opens its own lock fds, so they contend exactly like separate jobs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import stat
import sys
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from afo import gpu as gpu_mod
from afo.gpu import GpuClaimTimeout, claim_gpu, default_lock_dir, detect_gpu_count, gpu_env_summary

CTX = mp.get_context("fork")
ENV_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "SLURM_JOB_ID",
    "AFO_GPU_CLAIM",
    "AFO_GPU_LOCK_DIR",
    "AFO_N_GPUS",
    "AFO_JOB_NAME",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A workstation-like environment: no SLURM, nothing preset (forked workers inherit it)."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


# ---- worker processes -----------------------------------------------------------------------------------


def _timed_worker(lock_dir: str, n_gpus: int, hold_s: float, start, results) -> None:
    start.wait()
    with claim_gpu(lock_dir, n_gpus=n_gpus, timeout=10, poll=0.01, job_name="timed") as gpu:
        t0 = time.monotonic()  # CLOCK_MONOTONIC is system-wide: comparable across processes
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
        time.sleep(hold_s)
        t1 = time.monotonic()
    results.put((gpu, cvd, t0, t1))


def _holder(lock_dir: str, n_gpus: int, acquired, release, released) -> None:
    """Claim, report, hold until ``release`` is set (or forever if None), report the release time."""
    with claim_gpu(lock_dir, n_gpus=n_gpus, timeout=10, poll=0.01, job_name="holder-job") as gpu:
        acquired.put((os.getpid(), gpu, os.environ.get("CUDA_VISIBLE_DEVICES")))
        if release is None:
            time.sleep(60)
        else:
            release.wait(10)
        t = time.monotonic()
    if released is not None:
        released.put((gpu, t))


@contextmanager
def holders(lock_dir: Path, n_gpus: int, count: int, with_release: bool = True) -> Iterator[list]:
    """Start ``count`` holder processes and wait until each holds a GPU; yields [(proc, gpu, event)]."""
    acquired, released = CTX.Queue(), CTX.Queue()
    procs = []
    for _ in range(count):
        ev = CTX.Event() if with_release else None
        p = CTX.Process(target=_holder, args=(str(lock_dir), n_gpus, acquired, ev, released), daemon=True)
        p.start()
        procs.append((p, ev))
    got = {}
    for _ in range(count):
        pid, gpu, cvd = acquired.get(timeout=5)
        assert cvd == str(gpu)
        got[pid] = gpu
    out = [(p, got[p.pid], ev) for p, ev in procs]
    try:
        yield out
    finally:
        for p, _, _ in out:
            if p.is_alive():
                p.kill()
            p.join(5)


# ---- concurrency ------------------------------------------------------------------------------------------


def test_concurrent_claims_never_share_a_gpu(tmp_path: Path) -> None:
    n_gpus, n_workers, hold = 3, 7, 0.2
    start, results = CTX.Event(), CTX.Queue()
    procs = [
        CTX.Process(target=_timed_worker, args=(str(tmp_path), n_gpus, hold, start, results))
        for _ in range(n_workers)
    ]
    for p in procs:
        p.start()
    start.set()
    got = [results.get(timeout=10) for _ in procs]
    for p in procs:
        p.join(5)
        assert p.exitcode == 0
    for gpu, cvd, _, _ in got:
        assert gpu in range(n_gpus)
        assert cvd == str(gpu)  # each job saw only its own GPU
    for g in range(n_gpus):
        spans = sorted((t0, t1) for gpu, _, t0, t1 in got if gpu == g)
        assert spans, f"GPU {g} never used"
        for (_, end), (begin, _) in zip(spans, spans[1:]):
            assert begin >= end, f"GPU {g} held by two jobs at once"
    # at most n_gpus jobs at any moment, and all of them busy at some moment
    events = sorted([(t0, 1) for *_, t0, _ in got] + [(t1, -1) for *_, t1 in got])
    running, peak = 0, 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == n_gpus
    # released slots were reused: 7 jobs of 0.2 s on 3 GPUs need at least 3 rounds
    assert max(t1 for *_, t1 in got) - min(t0 for *_, t0, _ in got) >= 3 * hold * 0.95


def test_fourth_claimer_waits_until_one_frees(tmp_path: Path) -> None:
    with holders(tmp_path, n_gpus=3, count=3) as held:
        assert sorted(g for _, g, _ in held) == [0, 1, 2]
        waiter_q = CTX.Queue()
        waiter = CTX.Process(target=_holder, args=(str(tmp_path), 3, waiter_q, None, None), daemon=True)
        waiter.start()
        try:
            with pytest.raises(queue.Empty):
                waiter_q.get(timeout=0.4)  # all three busy: the fourth is still waiting
            _, freed_gpu, ev = next(h for h in held if h[1] == 1)
            t_release = time.monotonic()
            ev.set()
            _, gpu, cvd = waiter_q.get(timeout=3)
            assert gpu == freed_gpu == 1 and cvd == "1"
            assert time.monotonic() - t_release < 2
        finally:
            waiter.kill()
            waiter.join(5)


def test_killed_holder_frees_its_slot(tmp_path: Path) -> None:
    with holders(tmp_path, n_gpus=1, count=1, with_release=False) as held:
        proc, gpu, _ = held[0]
        assert gpu == 0
        note = (tmp_path / "gpu0.lock").read_text()
        assert f"pid={proc.pid}" in note and "job=holder-job" in note
        os.kill(proc.pid, signal.SIGKILL)  # no finally/atexit runs: only the kernel can free the lock
        proc.join(5)
        assert proc.exitcode == -signal.SIGKILL
        t = time.monotonic()
        with claim_gpu(tmp_path, n_gpus=1, timeout=5, poll=0.01, job_name="successor") as got:
            assert got == 0
            assert time.monotonic() - t < 1.0
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
            note = (tmp_path / "gpu0.lock").read_text()
            assert f"pid={os.getpid()}" in note and "job=successor" in note
        # on exit: environment restored, note cleared, slot free again
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
        assert "CUDA_DEVICE_ORDER" not in os.environ
        assert (tmp_path / "gpu0.lock").read_text() == ""
        with claim_gpu(tmp_path, n_gpus=1, timeout=0) as again:
            assert again == 0


def test_timeout_raises_clear_error_naming_holder(tmp_path: Path) -> None:
    with holders(tmp_path, n_gpus=2, count=2, with_release=False) as held:
        t = time.monotonic()
        with pytest.raises(GpuClaimTimeout, match=r"no free GPU after 0.3 s") as exc:
            with claim_gpu(tmp_path, n_gpus=2, timeout=0.3, poll=0.05):
                pytest.fail("should not get a GPU")
        assert 0.3 <= time.monotonic() - t < 2
        for proc, gpu, _ in held:
            assert f"gpu{gpu}: pid={proc.pid}" in str(exc.value)
            # failed attempts must not have wiped the holders' notes
            assert f"pid={proc.pid}" in (tmp_path / f"gpu{gpu}.lock").read_text()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


# ---- when nothing is claimed ---------------------------------------------------------------------------


def test_slurm_claims_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "12345")
    lock_dir = tmp_path / "locks"
    with claim_gpu(lock_dir, n_gpus=4) as gpu:
        assert gpu is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not lock_dir.exists()  # not even the lock directory is touched


@pytest.mark.parametrize("preset", ["3", ""])  # "" = someone hid all GPUs on purpose
def test_preset_cuda_visible_devices_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preset: str) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", preset)
    with claim_gpu(tmp_path / "locks", n_gpus=4) as gpu:
        assert gpu is None
        assert os.environ["CUDA_VISIBLE_DEVICES"] == preset
    assert os.environ["CUDA_VISIBLE_DEVICES"] == preset
    assert not (tmp_path / "locks").exists()


def test_no_gpu_yields_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with claim_gpu(tmp_path / "locks", n_gpus=0) as gpu:
        assert gpu is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("AFO_N_GPUS", "0")  # detection path, overridden
    with claim_gpu(tmp_path / "locks") as gpu:
        assert gpu is None
    monkeypatch.setenv("AFO_GPU_CLAIM", "never")
    with claim_gpu(tmp_path / "locks", n_gpus=2) as gpu:
        assert gpu is None
    assert not (tmp_path / "locks").exists()


# ---- modes, detection, guards ---------------------------------------------------------------------------


def test_always_mode_shares_out_the_visible_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # e.g. a local snakemake inside an interactive allocation that made GPUs 4 and 6 visible
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.setenv("AFO_GPU_CLAIM", "always")
    with holders(tmp_path, n_gpus=0, count=1, with_release=False) as held:  # n_gpus ignored here
        assert held[0][1] == 4
        with claim_gpu(tmp_path, timeout=1, poll=0.01) as gpu:
            assert gpu == 6 and os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234abcd")
    with pytest.raises(ValueError, match="integer indices"):
        with claim_gpu(tmp_path):
            pass
    monkeypatch.setenv("AFO_GPU_CLAIM", "sometimes")
    with pytest.raises(ValueError, match="AFO_GPU_CLAIM"):
        with claim_gpu(tmp_path, n_gpus=1):
            pass


def test_detect_gpu_count_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'echo "GPU 0: NVIDIA A100 (UUID: GPU-aaa)"\n'
        'echo "  MIG 1g.5gb     Device  0: (UUID: MIG-bbb)"\n'
        'echo "GPU 1: NVIDIA A100 (UUID: GPU-ccc)"\n'
    )
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert detect_gpu_count() == 2
    with claim_gpu(tmp_path / "locks") as gpu:
        assert gpu == 0
    # nvidia-smi failing (driver not loaded) -> fall back to the driver's /proc listing
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    proc_dir = tmp_path / "proc_gpus"
    proc_dir.mkdir()
    for bus in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (proc_dir / bus).mkdir()
    monkeypatch.setattr(gpu_mod, "PROC_NVIDIA_GPUS", str(proc_dir))
    assert detect_gpu_count() == 3
    monkeypatch.setattr(gpu_mod, "PROC_NVIDIA_GPUS", str(tmp_path / "absent"))
    assert detect_gpu_count() == 0
    monkeypatch.setenv("AFO_N_GPUS", "5")
    assert detect_gpu_count() == 5
    monkeypatch.setenv("AFO_N_GPUS", "many")
    with pytest.raises(ValueError, match="AFO_N_GPUS"):
        detect_gpu_count()


def test_refuses_when_cuda_already_initialised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    with pytest.raises(RuntimeError, match="already initialised"):
        with claim_gpu(tmp_path, n_gpus=1):
            pass
    assert "torch_cuda_initialized=True" in gpu_env_summary()
    # nothing was left locked
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: False)))
    with claim_gpu(tmp_path, n_gpus=1, timeout=0) as gpu:
        assert gpu == 0


def test_default_lock_dir_and_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_lock_dir().name == f"afo-gpu-locks-{os.getuid()}"
    monkeypatch.setenv("AFO_GPU_LOCK_DIR", str(tmp_path / "shared"))
    assert default_lock_dir() == tmp_path / "shared"
    with claim_gpu(n_gpus=2) as gpu:
        assert gpu == 0
        assert (tmp_path / "shared" / "gpu0.lock").exists()
        line = gpu_env_summary()
        assert "CUDA_VISIBLE_DEVICES=0" in line and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in line
        assert f"pid={os.getpid()}" in line and "SLURM_JOB_ID=<unset>" in line
    assert "CUDA_VISIBLE_DEVICES=<unset>" in gpu_env_summary()


def test_user_device_order_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    with claim_gpu(tmp_path, n_gpus=1):
        assert os.environ["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"
    assert os.environ["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"
