"""Dataset manifests (afo.data.manifest): what makes `prepare` rerun when a dataset's files change."""

from __future__ import annotations

import os

from afo.data.manifest import dataset_files, manifest_digest


def test_manifest_changes_with_any_file(tmp_path):
    root = tmp_path / "NSD"
    (root / "betas").mkdir(parents=True)
    (root / "betas" / "a.nii.gz").write_bytes(b"x" * 10)
    (root / ".cache").mkdir()
    (root / ".cache" / "junk").write_text("ignored")
    first = manifest_digest(root)
    assert dataset_files(root) == [str(root / "betas" / "a.nii.gz")]
    assert manifest_digest(root) == first  # stable
    (root / ".cache" / "junk").write_text("changed")  # hidden files do not count
    assert manifest_digest(root) == first
    (root / "betas" / "a.nii.gz").write_bytes(b"y" * 10)  # same size, new content (mtime)
    os.utime(root / "betas" / "a.nii.gz", ns=(1, 1))
    second = manifest_digest(root)
    assert second != first
    (root / "betas" / "b.nii.gz").write_bytes(b"")  # a new file
    assert manifest_digest(root) != second
    assert manifest_digest(tmp_path / "absent") == "missing" and dataset_files(tmp_path / "absent") == []
