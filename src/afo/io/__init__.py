"""Writing files atomically: one home for the tmp-then-rename pattern every output of afo goes through.

A killed job never leaves a file that looks complete under its final name: content goes to a hidden temporary
file (or folder) in the same folder (so the rename stays on one file system) and is renamed over the target only
once it is fully written. :func:`atomic_path` is the pattern for a block of code; :class:`PendingFile` for a
writer whose work spans calls (the prepared store's :class:`~afo.data.store.StoreWriter`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The errors of afo's readers, defined with the rest of the vocabulary in afo.errors (imported from here too).
from afo.errors import CorruptFileError as CorruptFileError
from afo.errors import MissingFileError as MissingFileError


@contextmanager
def reading_hdf5(path: str | os.PathLike, what: str, rebuild: str) -> Iterator[None]:
    """Turn h5py's low-level failures inside the block into one line naming the file and how to rebuild it.

    h5py reports a truncated or overwritten file as an OSError (at open, or when a damaged chunk is read);
    ``rebuild`` says which rule or command writes the file again, e.g. "rerun the workflow's prepare rule".
    """
    try:
        yield
    except OSError as exc:
        raise CorruptFileError(
            f"{path}: cannot read this {what} ({exc}); it is truncated or damaged — delete it and {rebuild}"
        ) from exc


def temporary_sibling(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A unique hidden name beside ``path`` (pid + random part: concurrent writers never share one).

    ``suffix`` lets writers that infer a format from the name (nibabel, matplotlib) keep the right extension.
    """
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}{suffix}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ``path`` left by writers that were killed (their pid is gone); returns them.

    Temporaries of live writers (a concurrent job) are left alone.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*"):
        parts = tmp.name[len(path.name) + 2 :].split(".")
        if len(parts) >= 2 and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            _remove(tmp)
            removed.append(tmp)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class PendingFile:
    """The temporary sibling ``tmp`` of ``path`` for a writer to fill (a file, or a folder it creates):
    :meth:`commit` renames it over ``path``, :meth:`discard` removes it. Temporaries of killed writers of the same
    ``path`` are removed first (:func:`remove_stale_temporaries`).

    A unique name rather than mkstemp, whose 0600 mode would survive the rename. A folder replaces only an empty
    folder (the rename's rule): a writer that replaces a full one removes it before :meth:`commit`.
    """

    def __init__(self, path: str | os.PathLike, suffix: str = ".tmp"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        self.tmp = temporary_sibling(self.path, suffix)

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        _remove(self.tmp)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed."""
    pending = PendingFile(path, suffix)
    try:
        yield pending.tmp
        pending.commit()
    except BaseException:
        pending.discard()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB blocks (a ViT-B weights file is ~350 MB, a movie ~1 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
