"""The one atomic writer (afo.io): all or nothing under the final name, and leftovers of killed writers cleaned."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from afo.io import atomic_path, atomic_write_text, remove_stale_temporaries


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "t.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "t.csv"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = tmp_path / f".t.csv.{dead}.abc.tmp"
    stale.write_text("left by a killed job")
    live = tmp_path / f".t.csv.{os.getpid()}.def.tmp"
    live.write_text("a concurrent writer")
    other = tmp_path / ".u.csv.1.x.tmp"
    other.write_text("another file's")
    atomic_write_text(target, "done")
    assert target.read_text() == "done" and not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temporaries(target) == []


def test_a_folder_is_written_atomically_too(tmp_path):
    target = tmp_path / "tree"
    with pytest.raises(RuntimeError):
        with atomic_path(target, suffix="") as tmp:
            (tmp / "sub").mkdir(parents=True)
            (tmp / "sub" / "f.txt").write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target, suffix="") as tmp:
        tmp.mkdir()
        (tmp / "f.txt").write_text("done")
    assert (target / "f.txt").read_text() == "done" and [p.name for p in tmp_path.iterdir()] == ["tree"]
