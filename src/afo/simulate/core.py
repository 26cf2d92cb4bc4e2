"""Write a whole synthetic experiment: stimuli, fMRI subjects and EEG subjects, as folder datasets."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from afo.simulate.config import SimulationConfig
from afo.simulate.eeg import check_channels, simulate_eeg_subject
from afo.simulate.fmri import SubjectData, simulate_fmri_subject
from afo.simulate.stimuli import make_stimuli

MANIFEST = "simulation.yaml"
# Independent random streams (seed, stream, index): adding an EEG subject never changes the fMRI subjects.
_STIMULI, _SPLIT, _FMRI, _EEG = 0, 1, 2, 3


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def image_names(n: int) -> list[str]:
    """File names of the stimuli, in index order (sorting them keeps that order)."""
    return [f"img_{i:05d}.png" for i in range(n)]


def assign_splits(config: SimulationConfig) -> np.ndarray:
    """Split label per image [n_images]: ``n_test_images`` test (shown repeatedly), ~val_fraction val, rest train.

    The same for every subject and modality, so test images are shared (as NSD's shared images)."""
    perm = _rng(config.seed, _SPLIT).permutation(config.n_images)
    n_val = round(config.val_fraction * config.n_images)
    split = np.full(config.n_images, "train", dtype=object)
    split[perm[: config.n_test_images]] = "test"
    split[perm[config.n_test_images : config.n_test_images + n_val]] = "val"
    return split


def _write_subject(folder: Path, data: SubjectData, names: list[str], split: np.ndarray) -> None:
    folder.mkdir(parents=True)
    np.save(folder / "responses.npy", data.responses.astype(np.float32))
    np.save(folder / "coords.npy", data.coords.astype(np.float32))
    pd.DataFrame({"image": np.array(names)[data.trial_image], "split": split[data.trial_image]}).to_csv(
        folder / "trials.csv", index=False
    )
    pd.DataFrame({"voxel": np.arange(data.rois.size), "roi": data.rois}).to_csv(folder / "rois.csv", index=False)
    data.ground_truth.to_csv(folder / "ground_truth.csv", index=False, float_format="%.6g")


def _write_dataset_yaml(folder: Path, name: str, modality: str, config: SimulationConfig) -> None:
    meta = {
        "name": name,
        "modality": modality,
        "description": f"synthetic retinotopic brain ({modality}), afo.simulate seed {config.seed}",
        "ground_truth": "<subject>/ground_truth.csv: true RF centre (u_x, u_y), rf_size, area, level per voxel",
    }
    (folder / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (no extra space; readers see plain files) or, across file systems, a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished tree into place; an earlier simulation there is replaced, anything else refused."""
    if out.exists():
        if out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir())):
            shutil.rmtree(out)
        else:
            raise FileExistsError(f"{out}: exists and is not an afo simulation (no {MANIFEST}); choose another --out or remove it")
    tmp.rename(out)


def simulate(out: str | os.PathLike, config: SimulationConfig | None = None) -> dict:
    """Write a synthetic experiment under ``out`` and return a small report.

    Layout (one folder dataset per modality, each complete, as docs/design.md "the folder dataset")::

        <out>/simulation.yaml          the config used and the report (written last: the run finished)
        <out>/stimuli.csv              per image: split, n_objects, background, visible area of each category/colour
        <out>/fmri/dataset.yaml        name: <name>_fmri, modality: fmri
        <out>/fmri/images/img_*.png    the stimuli
        <out>/fmri/subjNN/             responses.npy, trials.csv, coords.npy, rois.csv, ground_truth.csv
        <out>/eeg/...                  the same for EEG subjects; eeg/images holds hard links to fmri/images
                                       (copies where links are impossible)

    A folder without subjects of a modality (n_fmri_subjects or n_eeg_subjects = 0) is not written. The tree is
    built beside ``out`` and moved into place at the end, so a crash never leaves a half-written dataset; an
    earlier simulation at ``out`` is replaced, any other existing non-empty folder is an error.
    """
    config = config or SimulationConfig()
    out = Path(out)
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        report = _simulate_into(tmp, config)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report["out"] = str(out)
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report


def _simulate_into(root: Path, config: SimulationConfig) -> dict:
    if config.n_eeg_subjects:
        check_channels(config.eeg_channels)  # fail before the slow part
    names = image_names(config.n_images)
    split = assign_splits(config)
    stim = make_stimuli(config.n_images, config.image_size, config.feature_grid, _rng(config.seed, _STIMULI),
                        config.min_objects, config.max_objects)  # fmt: skip
    root.mkdir(parents=True)
    table = stim.table.copy()
    table.insert(0, "split", split)
    table.insert(0, "image", names)
    table.to_csv(root / "stimuli.csv", index=False, float_format="%.6g")

    parts = {"fmri": (config.n_fmri_subjects, simulate_fmri_subject, _FMRI),
             "eeg": (config.n_eeg_subjects, simulate_eeg_subject, _EEG)}  # fmt: skip
    image_dir: Path | None = None
    report: dict = {"seed": config.seed, "n_images": config.n_images, "n_test_images": config.n_test_images,
                    "n_val_images": int((split == "val").sum()), "datasets": {}}  # fmt: skip
    for modality, (n_subjects, make_subject, stream) in parts.items():
        if n_subjects == 0:
            continue
        folder = root / modality
        (folder / "images").mkdir(parents=True)
        for name, image in zip(names, stim.images):
            if image_dir is None:
                Image.fromarray(image).save(folder / "images" / name)
            else:
                _link_or_copy(image_dir / name, folder / "images" / name)
        image_dir = image_dir or folder / "images"
        _write_dataset_yaml(folder, f"{config.name}_{modality}", modality, config)
        subjects = {}
        for s in range(n_subjects):
            data = make_subject(config, stim, split, _rng(config.seed, stream, s))
            _write_subject(folder / f"subj{s + 1:02d}", data, names, split)
            subjects[f"subj{s + 1:02d}"] = {"n_trials": int(data.responses.shape[0]), "n_voxels": int(data.responses.shape[1])}
        report["datasets"][modality] = {"path": modality, "name": f"{config.name}_{modality}", "subjects": subjects}
    manifest = {"config": config.to_dict(), "report": report}
    (root / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return report
