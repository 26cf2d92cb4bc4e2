"""GPU slot claiming (afo.gpu): file locks under concurrency, killed holders, SLURM, CPU-only, timeouts.

No GPU is needed: ``n_gpus`` is passed explicitly (or detection is faked), and claim_gpu only ever sets
environment variables, never touches CUDA. Worker processes are forked (fast, and the test module's
functions need no pickling); each worker opens its own lock fds, so they contend exactly like separate jobs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pwd
import queue
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from afo import gpu as gpu_mod
from afo.errors import UserError
from afo.gpu import (
    GpuClaimTimeout,
    GpuCountError,
    GpuLockDirError,
    claim_gpu,
    claim_gpus,
    default_lock_dir,
    detect_gpu_count,
    gpu_env_summary,
)

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
        CTX.Process(target=_timed_worker, args=(str(tmp_path), n_gpus, hold, start, results)) for _ in range(n_workers)
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


def _multi_holder(lock_dir: str, n_gpus: int, count: int, acquired, release) -> None:
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)  # forked from a claiming test process: be a fresh job
    try:
        with claim_gpus(count, lock_dir, n_gpus=n_gpus, timeout=0.3, poll=0.02, job_name="multi") as gpus:
            acquired.put((gpus, os.environ.get("CUDA_VISIBLE_DEVICES")))
            if release is not None:
                release.wait(10)
    except GpuClaimTimeout as exc:
        acquired.put((None, str(exc)))


def test_multi_gpu_job_claims_all_its_slots_at_once(tmp_path: Path) -> None:
    # 4 GPUs, one held by a single-GPU job: a 2-GPU job gets two of the free ones, listed in CUDA_VISIBLE_DEVICES.
    with holders(tmp_path, n_gpus=4, count=1) as held:
        busy = held[0][1]
        with claim_gpus(2, tmp_path, n_gpus=4, timeout=1, poll=0.01) as gpus:
            assert len(gpus) == 2 and busy not in gpus
            assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, gpus))
            for g in gpus:
                assert f"pid={os.getpid()}" in (tmp_path / f"gpu{g}.lock").read_text()
            # One GPU is left: another 2-GPU job waits, holding nothing meanwhile, and times out...
            q = CTX.Queue()
            other = CTX.Process(target=_multi_holder, args=(str(tmp_path), 4, 2, q, None), daemon=True)
            other.start()
            got, message = q.get(timeout=5)
            other.join(5)
            assert got is None and "no 2 free GPUs after 0.3 s" in message
            # ...and gave back the one slot it could take: a 1-GPU job gets it.
            other = CTX.Process(target=_multi_holder, args=(str(tmp_path), 4, 1, q, None), daemon=True)
            other.start()
            last, _ = q.get(timeout=5)
            other.join(5)
            assert last is not None and last[0] not in gpus and last[0] != busy
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_job_needing_more_gpus_than_the_machine_has_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(GpuCountError, match="needs 4 GPUs but only 2 can be claimed.*compute.train_devices"):
        with claim_gpus(4, tmp_path, n_gpus=2, timeout=60):
            pytest.fail("should not start")


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
    monkeypatch.setitem(
        sys.modules, "torch", types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: False))
    )
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


# ---- the lock directory: problems, modes, sharing between users -----------------------------------------


def _one_line_error(lock_dir: Path, **kwargs) -> str:
    with pytest.raises(GpuLockDirError) as exc:
        with claim_gpu(lock_dir, n_gpus=1, timeout=0, **kwargs):
            pytest.fail("claimed a GPU through an unusable lock directory")
    message = str(exc.value)
    assert "\n" not in message and str(lock_dir) in message
    return message


def test_lock_dir_problems_are_one_clear_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert issubclass(GpuLockDirError, UserError)  # the CLI prints it as one line, no traceback
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert "is not a directory" in _one_line_error(not_a_dir)
    # a lock file planted as a link to one of our files: refused, and the file is left intact
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (shared / "gpu0.lock").symlink_to(victim)
    assert "symbolic link" in _one_line_error(shared)
    assert victim.read_text() == "keep me"
    (shared / "gpu0.lock").unlink()
    (shared / "gpu0.lock").mkdir()
    assert "not a regular file" in _one_line_error(shared)
    # the per-user default directory replaced by a link (e.g. by another user in /tmp)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    default_lock_dir().symlink_to(shared)
    with pytest.raises(GpuLockDirError, match="is not a directory"):
        with claim_gpu(n_gpus=1, timeout=0):
            pass


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the default lock directory another owner")
def test_default_lock_dir_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    default_lock_dir().mkdir(mode=0o700)
    os.chown(default_lock_dir(), 54321, 54321)
    with pytest.raises(GpuLockDirError, match=r"belongs to another user \(uid 54321\)"):
        with claim_gpu(n_gpus=1, timeout=0):
            pass


def test_shared_lock_dir_and_files_are_made_shareable(tmp_path: Path) -> None:
    shared = tmp_path / "a" / "locks"  # parents created too
    old = os.umask(0o077)  # the narrowest usual umask: modes must not depend on it
    try:
        with claim_gpu(shared, n_gpus=2, timeout=0) as gpu:
            assert gpu == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "gpu0.lock").stat().st_mode) == 0o666
    assert [p.name for p in shared.parent.iterdir()] == ["locks"]  # no temporary directory left behind
    # a directory someone prepared (e.g. group-shared, 2770) keeps its modes
    group_dir = tmp_path / "group"
    group_dir.mkdir()
    group_dir.chmod(0o2770)
    with claim_gpu(group_dir, n_gpus=1, timeout=0):
        pass
    assert stat.S_IMODE(group_dir.stat().st_mode) == 0o2770


# Two real users: created with useradd for the test (root only), their claims run through runuser.
USERS = ("afotest-gpu-a", "afotest-gpu-b")
_CLAIM_SCRIPT = """
import sys
from afo.gpu import GpuClaimTimeout, GpuLockDirError, claim_gpu
n_gpus, hold = int(sys.argv[1]), sys.argv[2] == "hold"
try:  # the lock directory comes from AFO_GPU_LOCK_DIR, as users share it
    with claim_gpu(n_gpus=n_gpus, timeout=0.3, poll=0.05, job_name="user-test") as gpu:
        print(f"GPU {gpu}", flush=True)
        if hold:
            sys.stdin.read()  # until the test closes our stdin
except (GpuClaimTimeout, GpuLockDirError) as exc:
    print(f"{type(exc).__name__}: {exc}", flush=True)
"""


@pytest.fixture(scope="module")
def two_users() -> Iterator[str]:
    """Two throwaway users and a Python both can run afo.gpu with; yields that interpreter."""
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("needs root with useradd and runuser to create two users")
    created = []
    for user in USERS:
        if subprocess.run(["id", user], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", user], check=True)
            created.append(user)
    try:
        src = str(Path(gpu_mod.__file__).resolve().parents[1])
        for python in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
            ok = (
                python
                and subprocess.run(
                    ["runuser", "-u", USERS[0], "--", "env", f"PYTHONPATH={src}", python, "-c", "import afo.gpu"],
                    capture_output=True,
                ).returncode
                == 0
            )
            if ok:
                break
        else:
            pytest.skip(f"no Python interpreter that other users can run with {src} on the path")
        yield python
    finally:
        for user in created:
            subprocess.run(["userdel", user], capture_output=True)


def _as_user(python: str, user: str, lock_dir: str, n_gpus: str, hold: bool = False) -> subprocess.Popen:
    src = str(Path(gpu_mod.__file__).resolve().parents[1])
    return subprocess.Popen(
        [
            "runuser",
            "-u",
            user,
            "--",
            "env",
            f"PYTHONPATH={src}",
            f"AFO_GPU_LOCK_DIR={lock_dir}",
            python,
            "-c",
            _CLAIM_SCRIPT,
            n_gpus,
            "hold" if hold else "once",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _claim_as(python: str, user: str, lock_dir: Path, n_gpus: int) -> str:
    out, err = _as_user(python, user, str(lock_dir), str(n_gpus)).communicate(timeout=60)
    assert out.strip(), err
    return out.strip()


def test_two_users_share_one_lock_directory(two_users: str) -> None:
    python = two_users
    a, b = USERS
    base = Path(tempfile.mkdtemp(prefix="afo-gpu-share-"))
    try:
        base.chmod(0o755)
        shared = base / "locks"
        refused = _claim_as(python, a, shared, 1)  # base belongs to root: a cannot create the directory there
        assert refused.startswith("GpuLockDirError: cannot create the GPU lock directory") and "\n" not in refused
        base.chmod(0o1777)  # like /tmp: now a's claim creates it
        holder = _as_user(python, a, str(shared), "2", hold=True)
        try:
            assert holder.stdout.readline().strip() == "GPU 0"
            st = shared.stat()
            assert pwd.getpwuid(st.st_uid).pw_name == a and stat.S_IMODE(st.st_mode) == 0o1777
            assert stat.S_IMODE((shared / "gpu0.lock").stat().st_mode) == 0o666
            # b gets the other GPU while a holds GPU 0, and waits in vain for GPU 0 alone (a's note is readable)
            assert _claim_as(python, b, shared, 2) == "GPU 1"
            timeout = _claim_as(python, b, shared, 1)
            assert timeout.startswith("GpuClaimTimeout") and "gpu0: pid=" in timeout and "job=user-test" in timeout
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
        # a is gone: b locks the file a created
        assert _claim_as(python, b, shared, 1) == "GPU 0"
        assert pwd.getpwuid((shared / "gpu0.lock").stat().st_uid).pw_name == a
        # a directory only its owner may write: one clear line for the other user
        private = base / "private"
        assert _claim_as(python, a, private, 1) == "GPU 0"
        private.chmod(0o755)
        (private / "gpu0.lock").chmod(0o644)  # as an older afo left them
        refused = _claim_as(python, b, private, 1)
        assert refused.startswith("GpuLockDirError: cannot open the GPU lock file") and "Permission denied" in refused
        assert "chmod 1777" in refused and "\n" not in refused
    finally:
        shutil.rmtree(base)
