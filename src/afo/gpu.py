"""GPU dispatch: every GPU job claims its free GPUs (one, or N for a multi-GPU training job) for its lifetime, before CUDA starts.

``snakemake --cores 8 --resources gpu=4`` caps how many GPU jobs run at once, but Snakemake does not say
*which* GPU a job should use: without help, all four jobs would land on GPU 0. So every workflow job whose rule
declares ``resources: gpu=N`` runs its work inside :func:`claim_gpus` (:func:`afo.jobs.run_job` does it), and the
``afo`` commands that run a model do the same with ``--claim-gpu`` (:func:`claim_gpu`, one GPU)::

    from afo.gpu import claim_gpus

    with claim_gpus(n_gpus, job_name=f"afo {rule}") as gpus:   # [i, ...], or None: nothing claimed
        import torch  # CUDA may start from here on; it sees only the claimed GPUs (as cuda:0, cuda:1, ...)
        ...

How a slot is claimed: one lock file per GPU, ``<lock_dir>/gpu<i>.lock``, taken with a non-blocking
exclusive ``flock``. The kernel releases such a lock when the last file descriptor to it closes, which
happens when the holder process dies for any reason, SIGKILL and OOM kill included; no stale lock can
outlive its job, so no clean-up step or pid bookkeeping is needed. The first free GPU wins; if all are busy
the claimer polls until ``timeout``. The winner sets ``CUDA_VISIBLE_DEVICES`` to its GPU, which only works
if CUDA has not yet been initialised in the process (hence "before CUDA starts", and hence GPUs are counted
with ``nvidia-smi`` in a subprocess rather than with ``torch.cuda``, which would initialise CUDA here).

When not to claim (``AFO_GPU_CLAIM=auto``, the default): under a SLURM allocation (``SLURM_JOB_ID`` set)
SLURM already gave the job its GPUs, and if ``CUDA_VISIBLE_DEVICES`` is already set a user or a scheduler
has chosen; in both cases the environment is left alone and ``None`` is yielded. Without GPUs, ``None`` is
yielded too and the job runs on the CPU.

Environment variables read (no other state):

- ``AFO_GPU_LOCK_DIR``: the lock directory (default ``<tmp>/afo-gpu-locks-<uid>``, per user). Set it to one
  directory for every user to share GPUs between users (see "Sharing GPUs between users" below).
- ``AFO_N_GPUS``: number of GPUs, overriding detection (e.g. for accelerators ``nvidia-smi`` cannot see).
- ``AFO_GPU_CLAIM``: ``auto`` (above), ``never`` (claim nothing, yield ``None``), or ``always``: claim even
  under SLURM or a preset ``CUDA_VISIBLE_DEVICES``, choosing among the devices it lists (for running a local
  Snakemake with ``--resources gpu=N`` inside an interactive multi-GPU allocation).
- ``AFO_JOB_NAME`` / ``SLURM_JOB_NAME``: the job name written into the lock file if none is passed.

Sharing GPUs between users: all of them set ``AFO_GPU_LOCK_DIR`` to the same directory. If it does not exist,
the first claim creates it with mode ``1777`` (like /tmp: everyone may add lock files, nobody may remove or
replace another user's); to restrict sharing to a group, create it beforehand with ``chgrp GROUP DIR`` and
``chmod 2770 DIR``, and afo leaves its modes alone. Lock files are made readable and writable by everyone who
can enter the directory (mode ``666``), so that any user can lock a file another user created. Lock files are
never opened through a symbolic link. Every problem with the directory or a lock file (not a directory, owned
by someone else, read-only, not writable, a link) is a :class:`GpuLockDirError` naming the path and the fix.

A job that needs N GPUs (``claim_gpus(N)``: a training job with ``compute.train_devices: N``, which declares
``resources: gpu=N``) takes N lock files at once, all or nothing, and sets ``CUDA_VISIBLE_DEVICES=<i>,<j>,...``;
the N training processes it starts inherit that variable and are not claimers themselves.

Limits: one claim per process (``CUDA_VISIBLE_DEVICES`` is process-wide; a nested claim in ``auto`` mode
sees it set and is a no-op). Children forked while the lock is held (e.g. DataLoader workers) share it;
children started with exec do not inherit it. POSIX only (``fcntl``). Locks on a local file system are
safe; for a lock directory on NFS, rely on the NFS server's lock support.
"""

from __future__ import annotations

import datetime
import errno
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from afo.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Where the NVIDIA driver lists one entry per GPU; the fallback count when ``nvidia-smi`` is missing.
PROC_NVIDIA_GPUS = "/proc/driver/nvidia/gpus"

_CLAIM_MODES = ("auto", "always", "never")
# Variables claim_gpu may change; restored on exit so that a claim leaves no trace in the process.
_MANAGED_VARS = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
# Shown by gpu_env_summary: these two always ("<unset>" too), the rest only when set.
_SUMMARY_ALWAYS = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")
_SUMMARY_IF_SET = (
    "CUDA_DEVICE_ORDER",
    "SLURM_JOB_GPUS",
    "SLURM_STEP_GPUS",
    "AFO_GPU_CLAIM",
    "AFO_GPU_LOCK_DIR",
    "AFO_N_GPUS",
)


#: Mode of a shared lock directory afo creates: everyone may add files, only a file's owner may remove it.
SHARED_DIR_MODE = 0o1777
#: Mode of a lock file: any user who can enter the directory can open it for writing and lock it.
LOCK_FILE_MODE = 0o666
# Errors opening a lock file that come from the directory's or the file's state, i.e. that the user fixes.
_LOCK_FILE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ELOOP, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC)


class GpuClaimTimeout(TimeoutError):
    """No GPU became free within the timeout."""


class GpuCountError(UserError):
    """A job needs more GPUs than the machine (or the devices made visible to it) has."""


class GpuLockDirError(UserError):
    """The GPU lock directory, or a lock file in it, cannot be used; the message names the path and the fix."""


def default_lock_dir() -> Path:
    """``$AFO_GPU_LOCK_DIR``, else ``<tmp>/afo-gpu-locks-<uid>``.

    Per user by default (private, mode 0700, refused if another user owns it): a world-shared name in /tmp
    could be pre-created by another user. Point ``AFO_GPU_LOCK_DIR`` at one directory to share GPUs between
    users (see the module docstring for its modes).
    """
    env = os.environ.get("AFO_GPU_LOCK_DIR")
    if env:
        return Path(env)
    uid = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return Path(tempfile.gettempdir()) / f"afo-gpu-locks-{uid}"


def detect_gpu_count() -> int:
    """Number of NVIDIA GPUs on this machine, without initialising CUDA in this process.

    ``$AFO_N_GPUS`` if set; else the ``GPU <i>:`` lines of ``nvidia-smi -L`` (run as a subprocess); else
    the entries of ``/proc/driver/nvidia/gpus``; else 0. It counts physical GPUs and ignores
    ``CUDA_VISIBLE_DEVICES``, which is why :func:`claim_gpu` only calls it when that variable is unset.
    """
    env = os.environ.get("AFO_N_GPUS")
    if env is not None and env.strip():
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"AFO_N_GPUS must be a non-negative integer, got {env!r}") from None
        if n < 0:
            raise ValueError(f"AFO_N_GPUS must be a non-negative integer, got {env!r}")
        return n
    exe = shutil.which("nvidia-smi")
    if exe is not None:
        try:
            out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and out.returncode == 0:
            # MIG instances are listed indented under their GPU ("  MIG 1g.5gb Device 0: ..."); only the
            # GPU lines are indices that CUDA_VISIBLE_DEVICES=<i> accepts.
            return sum(1 for line in out.stdout.splitlines() if re.match(r"GPU \d+:", line))
    try:
        return len(os.listdir(PROC_NVIDIA_GPUS))
    except OSError:
        return 0


def _claim_mode() -> str:
    mode = os.environ.get("AFO_GPU_CLAIM", "auto").strip().lower() or "auto"
    if mode not in _CLAIM_MODES:
        raise ValueError(f"AFO_GPU_CLAIM must be one of {_CLAIM_MODES}, got {mode!r}")
    return mode


def _candidates(n_gpus: int | None, mode: str) -> list[int] | None:
    """GPU indices to try, or None when this job should claim nothing (the caller yields None)."""
    if mode == "never":
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mode == "auto":
        if os.environ.get("SLURM_JOB_ID") or visible is not None:
            return None  # the scheduler or the user chose already; an empty value means "no GPU"
    elif visible is not None:  # "always": share out the devices someone made visible
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if not all(e.isdigit() for e in entries):
            raise ValueError(
                "AFO_GPU_CLAIM=always needs CUDA_VISIBLE_DEVICES to list integer indices, got "
                f"{visible!r} (GPU UUIDs are not supported)"
            )
        return [int(e) for e in entries] or None
    n = detect_gpu_count() if n_gpus is None else int(n_gpus)
    if n < 0:
        raise ValueError(f"n_gpus must be >= 0, got {n_gpus!r}")
    return list(range(n)) or None


def _ensure_cuda_not_initialised() -> None:
    """Refuse to claim if torch already initialised CUDA here: CUDA_VISIBLE_DEVICES would be ignored."""
    torch = sys.modules.get("torch")  # never import torch just to check
    is_init = getattr(getattr(torch, "cuda", None), "is_initialized", None)
    if callable(is_init) and is_init():
        raise RuntimeError(
            "CUDA is already initialised in this process, so setting CUDA_VISIBLE_DEVICES has no effect; "
            "enter claim_gpu() before anything touches torch.cuda"
        )


def _prepare_lock_dir(lock_dir: Path, private: bool) -> None:
    """Create ``lock_dir`` if needed (0700 if ``private``, else shared: 1777) and check it is usable."""
    try:
        if private:
            lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        elif not lock_dir.exists():
            _create_shared_dir(lock_dir)
    except FileExistsError:
        pass  # a file, or a dangling link, of that name: reported below
    except OSError as exc:
        raise GpuLockDirError(
            f"cannot create the GPU lock directory {lock_dir}: {exc.strerror}; create it yourself "
            f"(mkdir -m 1777 {lock_dir}) or set AFO_GPU_LOCK_DIR to a directory you can write"
        ) from None
    st = os.lstat(lock_dir) if private else _stat_or_none(lock_dir)
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise GpuLockDirError(
            f"the GPU lock directory {lock_dir} is not a directory (a file or a link); remove it, or set AFO_GPU_LOCK_DIR "
            "to a directory"
        )
    # Another user could have created (or symlinked) our per-user default name in the shared /tmp.
    if private and st.st_uid != os.getuid():
        raise GpuLockDirError(
            f"the GPU lock directory {lock_dir} belongs to another user (uid {st.st_uid}); "
            "set AFO_GPU_LOCK_DIR to a directory of your own"
        )


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _create_shared_dir(lock_dir: Path) -> None:
    """Create ``lock_dir`` with mode 1777 atomically: other users never see it with the umask's narrower mode."""
    lock_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{lock_dir.name}.", dir=lock_dir.parent))
    try:
        os.chmod(tmp, SHARED_DIR_MODE)
        os.rename(tmp, lock_dir)  # fails if another claimer created it meanwhile and added a lock file
    except OSError:
        os.rmdir(tmp)
        if not lock_dir.is_dir():
            raise


def _lock_path(lock_dir: Path, gpu: int) -> Path:
    return lock_dir / f"gpu{gpu}.lock"


def _open_lock_file(path: Path) -> int:
    """An fd open for writing on the lock file ``path``, created readable and writable by every user."""
    # No O_TRUNC: a claimer that fails must not wipe the holder's note. No following links: in a shared
    # directory another user could point gpuN.lock at one of our files and have us truncate it. Python fds are
    # close-on-exec, so programs the job execs do not inherit the lock.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), LOCK_FILE_MODE)
    except OSError as exc:
        if exc.errno not in _LOCK_FILE_ERRNOS:
            raise
        raise GpuLockDirError(_lock_file_problem(path, exc)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise GpuLockDirError(f"the GPU lock file {path} is not a regular file; remove it")
    # The umask narrowed the mode at creation: widen it so that other users sharing the directory can lock it.
    if st.st_uid == os.getuid() and st.st_mode & LOCK_FILE_MODE != LOCK_FILE_MODE:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | LOCK_FILE_MODE)
    return fd


def _lock_file_problem(path: Path, exc: OSError) -> str:
    """One line saying why the lock file ``path`` cannot be opened, and the fix."""
    directory = path.parent
    if exc.errno == errno.EROFS:
        return f"the GPU lock directory {directory} is on a read-only file system; set AFO_GPU_LOCK_DIR to a writable directory"
    if exc.errno == errno.ELOOP:
        return f"the GPU lock file {path} is a symbolic link, which afo never follows; remove it"
    if exc.errno in (errno.EISDIR, errno.ENOTDIR):
        return f"the GPU lock file {path} is not a regular file; remove it"
    if exc.errno == errno.ENOSPC:
        return f"no space left for the GPU lock file {path}; free space there or set AFO_GPU_LOCK_DIR elsewhere"
    return (
        f"cannot open the GPU lock file {path} for writing ({exc.strerror}): every user sharing {directory} needs "
        f"to create and write lock files there (chmod 1777 {directory}, or for a group: chgrp GROUP {directory}; "
        f"chmod 2770 {directory}; and chmod 666 {directory}/gpu*.lock), or set AFO_GPU_LOCK_DIR to a directory of your own"
    )


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None if another process holds it."""
    fd = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _write_note(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def _release(fd: int) -> None:
    # The lock file is never unlinked: a claimer may already have it open, and would then lock an inode
    # that no longer has a name while a third process creates and locks a fresh file of the same name.
    try:
        _write_note(fd, "")
        # Unlock explicitly rather than only closing: children forked meanwhile share this open file
        # description and would otherwise keep the GPU locked while they live.
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _describe_holders(lock_dir: Path, gpus: Sequence[int]) -> str:
    parts = []
    for gpu in gpus:
        try:
            note = _lock_path(lock_dir, gpu).read_text().strip().replace("\n", ", ")
        except OSError:
            note = ""
        parts.append(f"gpu{gpu}: {note or 'holder unknown'}")
    return "; ".join(parts)


def _default_job_name() -> str:
    name = os.environ.get("AFO_JOB_NAME") or os.environ.get("SLURM_JOB_NAME")
    return name or " ".join([os.path.basename(sys.argv[0] if sys.argv else "python"), *sys.argv[1:]])[:200]


@contextmanager
def claim_gpu(
    lock_dir: str | Path | None = None,
    n_gpus: int | None = None,
    timeout: float = 600.0,
    poll: float = 0.5,
    *,
    job_name: str | None = None,
) -> Iterator[int | None]:
    """Hold one free GPU for the duration of the ``with`` block; yields its index, or None.

    :func:`claim_gpus` with ``count=1`` (see there for every argument, and the module docstring).
    """
    with claim_gpus(1, lock_dir, n_gpus, timeout, poll, job_name=job_name) as gpus:
        yield None if gpus is None else gpus[0]


@contextmanager
def claim_gpus(
    count: int = 1,
    lock_dir: str | Path | None = None,
    n_gpus: int | None = None,
    timeout: float = 600.0,
    poll: float = 0.5,
    *,
    job_name: str | None = None,
) -> Iterator[list[int] | None]:
    """Hold ``count`` free GPUs for the duration of the ``with`` block; yields their indices, or None.

    Yields None, changing nothing, under SLURM (``SLURM_JOB_ID`` set), when ``CUDA_VISIBLE_DEVICES`` is
    already set, or when there is no GPU (see the module docstring, and ``AFO_GPU_CLAIM`` to change this).
    Otherwise takes the first ``count`` free ``<lock_dir>/gpu<i>.lock`` all at once (a job that finds fewer
    free releases what it took and tries again, so two multi-GPU jobs never hold half of each other's
    GPUs), sets ``CUDA_VISIBLE_DEVICES=<i>,<j>,...`` (and ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` unless set, so
    that ``<i>`` is the GPU that ``nvidia-smi`` calls ``<i>``), yields the indices, and on exit restores both
    variables and releases the locks. Each lock file holds the holder's pid, host, job name and start time
    while it is held.

    Args:
        count: GPUs the job needs (a training job with ``compute.train_devices: N`` needs N).
        lock_dir: directory of the lock files (default: :func:`default_lock_dir`). All jobs sharing GPUs
            must use the same directory.
        n_gpus: number of GPUs; None detects it (:func:`detect_gpu_count`) without initialising CUDA.
        timeout: seconds to wait for free GPUs before raising :class:`GpuClaimTimeout`.
        poll: seconds between attempts while too few GPUs are free.
        job_name: written into the lock files for debugging (default: ``$AFO_JOB_NAME``, ``$SLURM_JOB_NAME``
            or the command line).

    Raises:
        GpuClaimTimeout: too few GPUs became free within ``timeout`` seconds (the message names the holders).
        GpuCountError: the machine has fewer GPUs than ``count`` (it would wait forever).
        GpuLockDirError: the lock directory or a lock file cannot be used (the message names it and the fix).
        RuntimeError: CUDA is already initialised in this process.
    """
    if fcntl is None:  # pragma: no cover - Windows
        raise RuntimeError("claim_gpu needs POSIX file locks (fcntl); set AFO_GPU_CLAIM=never on this platform")
    if poll <= 0:
        raise ValueError(f"poll must be > 0 seconds, got {poll!r}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count!r}")
    candidates = _candidates(n_gpus, _claim_mode())
    if candidates is None:
        yield None
        return
    if len(candidates) < count:
        raise GpuCountError(
            f"this job needs {count} GPUs but only {len(candidates)} can be claimed here ({candidates}); "
            "lower compute.train_devices, or run it where that many GPUs are free"
        )
    _ensure_cuda_not_initialised()
    # Only the per-user default is private; a directory named by the caller or AFO_GPU_LOCK_DIR may be shared.
    private = lock_dir is None and not os.environ.get("AFO_GPU_LOCK_DIR")
    directory = default_lock_dir() if lock_dir is None else Path(lock_dir)
    _prepare_lock_dir(directory, private)

    note = (
        f"pid={os.getpid()}\nhost={socket.gethostname()}\njob={job_name or _default_job_name()}\n"
        f"since={datetime.datetime.now().astimezone().isoformat(timespec='seconds')}\n"
    )
    deadline = time.monotonic() + max(0.0, timeout)
    held: dict[int, int] = {}  # gpu -> fd holding its lock
    while True:
        for gpu in candidates:
            fd = _try_lock(_lock_path(directory, gpu))
            if fd is not None:
                held[gpu] = fd
                if len(held) == count:
                    break
        if len(held) == count:
            break
        # All or nothing: keeping a partial set while waiting could deadlock two jobs that each hold half.
        for fd in held.values():
            _release(fd)
        held = {}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            wanted = "free GPU" if count == 1 else f"{count} free GPUs"
            raise GpuClaimTimeout(
                f"no {wanted} after {timeout:g} s: of the {len(candidates)} GPU slots in {directory}, "
                f"too few are free ({_describe_holders(directory, candidates)}). Run fewer GPU jobs at once "
                "(snakemake --resources gpu=N with N <= the number of GPUs) or raise the timeout."
            )
        time.sleep(min(poll, remaining))

    gpus = sorted(held)
    saved = {var: os.environ.get(var) for var in _MANAGED_VARS}
    try:
        for fd in held.values():
            _write_note(fd, note)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        yield gpus
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        for fd in held.values():
            _release(fd)


def gpu_env_summary() -> str:
    """One line for logs: host, pid and the GPU-related environment (never initialises CUDA)."""
    parts = [f"host={socket.gethostname()}", f"pid={os.getpid()}"]
    parts += [f"{var}={os.environ.get(var, '<unset>')}" for var in _SUMMARY_ALWAYS]
    parts += [f"{var}={os.environ[var]}" for var in _SUMMARY_IF_SET if var in os.environ]
    torch = sys.modules.get("torch")
    is_init = getattr(getattr(torch, "cuda", None), "is_initialized", None)
    if callable(is_init):
        parts.append(f"torch_cuda_initialized={bool(is_init())}")
    return " ".join(parts)
