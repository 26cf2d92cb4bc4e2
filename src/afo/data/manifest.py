"""What a prepared store was made from: a manifest of the dataset's files, so that editing them reruns `prepare`.

Snakemake reruns a job when its declared inputs change. A folder dataset is small, so its files are declared
as inputs one by one (:func:`dataset_files`). A public dataset can hold tens of thousands of files that the
adapter reads in place; for those the workflow puts :func:`manifest_digest` — a hash of every file's relative
path, size and modification time — into `prepare`'s params, which costs one `stat` per file when the workflow
plans and changes whenever a file is added, removed, replaced or edited.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def dataset_files(root: str | Path) -> list[str]:
    """Every file below ``root`` (hidden files and folders left out), sorted; [] when ``root`` does not exist."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(folder, f) for f in files if not f.startswith(".")]
    return sorted(out)


def manifest_digest(root: str | Path) -> str:
    """Hash of (relative path, size, mtime in ns) of every file below ``root``; "missing" if there is no such folder.

    A missing root is not an error here (planning must not fail on a machine without the data, e.g. a dry run);
    `prepare` itself reports it.
    """
    root = Path(root)
    if not root.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for path in dataset_files(root):
        st = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
