"""Shared fixtures: tiny datasets written in the real formats."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_folder_dataset(
    root: Path,
    n_images: int = 24,
    n_voxels: int = 10,
    subjects: tuple[str, ...] = ("subj01", "subj02"),
    repeats: int = 3,
    n_repeated: int = 4,
    with_split: bool = True,
    n_val: int = 2,
    seed: int = 0,
) -> Path:
    """A small folder dataset (docs/design.md contract) whose responses are a noisy linear read of image brightness."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text("name: tiny\nmodality: fmri\n")
    names = []
    brightness = []
    for i in range(n_images):
        level = rng.uniform(20, 235)  # brightness varies across images: it is the signal voxels read
        pixels = np.clip(level + rng.normal(0, 15, size=(20, 16, 3)), 0, 255).astype(np.uint8)
        name = f"img_{i:03d}.png"
        Image.fromarray(pixels).save(root / "images" / name)
        names.append(name)
        brightness.append(pixels.mean() / 255.0)
    brightness = np.asarray(brightness)
    for s in subjects:
        d = root / s
        d.mkdir()
        # Images 0..n_repeated-1 are shown `repeats` times, the others once.
        shown = [i for i in range(n_images) for _ in range(repeats if i < n_repeated else 1)]
        shown = rng.permutation(shown)
        weights = rng.normal(size=n_voxels)
        responses = brightness[shown, None] * weights[None] + 0.05 * rng.normal(size=(len(shown), n_voxels))
        np.save(d / "responses.npy", responses.astype(np.float32))
        np.save(d / "coords.npy", rng.normal(size=(n_voxels, 3)).astype(np.float32) * 10)
        rows = {"image": [names[i] for i in shown]}
        if with_split:
            rows["split"] = [
                "test" if i < n_repeated else ("val" if i < n_repeated + n_val else "train") for i in shown
            ]
        import pandas as pd

        pd.DataFrame(rows).to_csv(d / "trials.csv", index=False)
        pd.DataFrame(
            {"voxel": np.arange(n_voxels), "roi": ["early" if v < n_voxels // 2 else "late" for v in range(n_voxels)]}
        ).to_csv(d / "rois.csv", index=False)
    return root


# Tests that install packages or start system services (tests/test_slurm.py's one-node SLURM: munge, MariaDB and the
# SLURM daemons) change the machine beyond the checkout, so they run only when asked (README).
SERVICES_OPT_IN = "AFO_TEST_SERVICES"


def services_asked() -> bool:
    """CI=true (as .ci/run sets it) or AFO_TEST_SERVICES=1."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(SERVICES_OPT_IN) == "1"


@pytest.fixture(scope="session")
def system_services() -> None:
    """Ask for this in a fixture that installs packages or starts system services: it skips unless asked."""
    if not services_asked():
        pytest.skip(
            f"installs packages and starts system services (daemons): set {SERVICES_OPT_IN}=1 (or CI=true) to run it"
        )


def file_tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below root with its size and modification time (a check must change none of them)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def assert_check_counts_store(fmt: str, root: Path, options: dict, store_path: Path) -> None:
    """A format's ``check`` of ``root`` writes nothing and counts, per subject, what its ``prepare`` wrote to
    ``store_path`` (with the same options), without NaN voxels; without ``read_data`` it counts none."""
    from afo.data.check import check_dataset
    from afo.data.store import SPLIT_CODE, PreparedStore

    before = file_tree(root)
    rows = check_dataset(fmt, root, options)
    assert file_tree(root) == before
    assert all(r["nan_voxels"] == 0 for r in rows)
    assert all(r["nan_voxels"] is None for r in check_dataset(fmt, root, options, read_data=False))
    with PreparedStore(store_path) as store:
        assert [r["subject"] for r in rows] == store.subjects
        for row in rows:
            info, split = store.info(row["subject"]), store.trial_split(row["subject"])
            assert row["trials"] == info.n_trials and row["voxels"] == info.n_voxels
            assert row["images"] == len(np.unique(store.trial_image(row["subject"])))
            assert row["splits"] == {name: int((split == code).sum()) for name, code in SPLIT_CODE.items()}


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return write_folder_dataset(tmp_path / "tiny")


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: extra threads only add synchronisation, and the CI box is shared.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Files whose module fixture runs a whole workflow (minutes): collected first, so that under pytest-xdist
# (`make test`: one file per worker at a time) they start at once and the other worker takes the short files.
_LONG_FILES = ("test_slurm.py", "test_analysis_workflow.py", "test_workflow.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept
