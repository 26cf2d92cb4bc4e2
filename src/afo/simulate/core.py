"""Write a whole synthetic experiment: stimuli, fMRI subjects and EEG subjects, as folder datasets."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from afo.io import atomic_path
from afo.simulate.config import ImageSetSpec, SimulationConfig
from afo.simulate.eeg import check_channels, simulate_eeg_subject
from afo.simulate.fmri import SubjectData, simulate_fmri_subject
from afo.simulate.stimuli import Stimuli, make_stimuli, subset

MANIFEST = "simulation.yaml"
# Independent random streams (seed, stream, index): adding an EEG subject never changes the fMRI subjects.
_STIMULI, _SPLIT, _FMRI, _EEG = 0, 1, 2, 3
# Streams of a heterogeneous experiment (config.datasets), keyed by the set's / dataset's position in the config.
_SET_STIMULI, _SET_SPLIT, _SET_REUSE, _DATASET = 10, 11, 12, 13
_EXTENSIONS = {"png": "png", "jpeg": "jpg"}


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def image_names(n: int) -> list[str]:
    """File names of the stimuli, in index order (sorting them keeps that order)."""
    return [f"img_{i:05d}.png" for i in range(n)]


def assign_splits(config: SimulationConfig, rng: np.random.Generator | None = None) -> np.ndarray:
    """Split label per image [n_images]: ``n_test_images`` test (shown repeatedly), ~val_fraction val, rest train.

    The same for every subject and modality, so test images are shared (as NSD's shared images)."""
    perm = (rng or _rng(config.seed, _SPLIT)).permutation(config.n_images)
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


def _clear(out: Path) -> None:
    """Make way for the finished tree: an earlier simulation at ``out`` is removed, anything else refused."""
    if out.exists():
        if out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir())):
            shutil.rmtree(out)
        else:
            raise FileExistsError(
                f"{out}: exists and is not an afo simulation (no {MANIFEST}); choose another --out or remove it"
            )


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

    With ``config.datasets`` (a heterogeneous experiment) the folders are ``<out>/<dataset name>/`` instead, one
    per dataset, each with its image set's files (``<set>_<index>.<png|jpg>``); stimuli.csv gains an
    ``image_set`` column and simulation.yaml lists the images each set reuses from another.
    A folder without subjects of a modality (n_fmri_subjects or n_eeg_subjects = 0) is not written. The tree is
    built beside ``out`` and moved into place at the end, so a crash never leaves a half-written dataset; an
    earlier simulation at ``out`` is replaced, any other existing non-empty folder is an error.
    """
    config = config or SimulationConfig()
    out = Path(out)
    start = time.perf_counter()
    with atomic_path(out, suffix="") as tmp:  # a folder: built beside out, renamed into place at the end
        report = _simulate_into(tmp, config)
        _clear(out)
    report["out"] = str(out)
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report


def _simulate_into(root: Path, config: SimulationConfig) -> dict:
    if config.datasets:
        return _simulate_datasets(root, config)
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
            subjects[f"subj{s + 1:02d}"] = {
                "n_trials": int(data.responses.shape[0]),
                "n_voxels": int(data.responses.shape[1]),
            }
        report["datasets"][modality] = {"path": modality, "name": f"{config.name}_{modality}", "subjects": subjects}
    manifest = {"config": config.to_dict(), "report": report}
    (root / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return report


# -- heterogeneous experiments (config.datasets) ------------------------------------------------------------


def _image_set(
    config: SimulationConfig, k: int, spec: ImageSetSpec, made: dict[str, tuple[Stimuli, list[str]]]
) -> tuple[Stimuli, list[str], list[dict]]:
    """Stimuli and file names of image set ``k``, and the images it reuses from an earlier set (source name,
    source file, own file). Reused images keep their source's pixels and features; only the shipped file differs."""
    ext = _EXTENSIONS[spec.file_format]
    names = [f"{spec.name}_{i:05d}.{ext}" for i in range(spec.n_images)]
    stim = make_stimuli(spec.n_images - spec.n_reused, config.image_size, config.feature_grid,
                        _rng(config.seed, _SET_STIMULI, k), config.min_objects, config.max_objects)  # fmt: skip
    reused: list[dict] = []
    if spec.n_reused:
        source, source_names = made[spec.reuse_from]
        rng = _rng(config.seed, _SET_REUSE, k)
        picks = np.sort(rng.choice(len(source_names), spec.n_reused, replace=False))
        # Where the reused images sit in this set: random positions, so they fall into any split.
        slots = np.sort(rng.choice(spec.n_images, spec.n_reused, replace=False))
        order = np.full(spec.n_images, -1)
        order[np.setdiff1d(np.arange(spec.n_images), slots)] = np.arange(spec.n_images - spec.n_reused)
        order[slots] = spec.n_images - spec.n_reused + np.arange(spec.n_reused)
        stim = subset(stim, source, picks, order)
        reused = [
            {"source_set": spec.reuse_from, "source_image": source_names[p], "image": names[s]}
            for p, s in zip(picks, slots)
        ]
    return stim, names, reused


def _write_images(folder: Path, stim: Stimuli, names: list[str], spec: ImageSetSpec, written: dict[str, Path]) -> None:
    """The set's image files in ``folder`` as the dataset ships them (format, size); hard links to the first
    dataset's files where the set was already written."""
    folder.mkdir(parents=True)
    for name, image in zip(names, stim.images):
        if spec.name in written:
            _link_or_copy(written[spec.name] / name, folder / name)
            continue
        picture = Image.fromarray(image)
        if spec.file_size is not None and spec.file_size != picture.size[0]:
            picture = picture.resize((spec.file_size, spec.file_size), Image.Resampling.BICUBIC)
        if spec.file_format == "jpeg":
            picture.save(folder / name, format="JPEG", quality=90)
        else:
            picture.save(folder / name)
    written.setdefault(spec.name, folder)


def _simulate_datasets(root: Path, config: SimulationConfig) -> dict:
    """Every image set, then every dataset as its own folder dataset ``<root>/<dataset name>``."""
    if any(d.modality != "fmri" for d in config.datasets):
        from afo.simulate.eeg import check_channels

        for d in config.datasets:
            if d.modality != "fmri":
                check_channels(config.for_dataset(d).eeg_channels)  # fail before the slow part
    root.mkdir(parents=True)
    made: dict[str, tuple[Stimuli, list[str]]] = {}
    splits: dict[str, np.ndarray] = {}
    report: dict = {"seed": config.seed, "image_sets": {}, "datasets": {}}
    tables = []
    for k, spec in enumerate(config.image_sets):
        stim, names, reused = _image_set(config, k, spec, made)
        made[spec.name] = (stim, names)
        flat = dataclasses.replace(config, image_sets=(), datasets=(), n_images=spec.n_images,
                                   n_test_images=spec.n_test_images, val_fraction=spec.val_fraction)  # fmt: skip
        splits[spec.name] = assign_splits(flat, _rng(config.seed, _SET_SPLIT, k))
        table = stim.table.copy()
        table.insert(0, "split", splits[spec.name])
        table.insert(0, "image", names)
        table.insert(0, "image_set", spec.name)
        tables.append(table)
        report["image_sets"][spec.name] = {"n_images": spec.n_images, "n_test_images": spec.n_test_images,
                                           "n_val_images": int((splits[spec.name] == "val").sum()), "reused": reused}  # fmt: skip
    pd.concat(tables, ignore_index=True).to_csv(root / "stimuli.csv", index=False, float_format="%.6g")

    written: dict[str, Path] = {}
    for j, d in enumerate(config.datasets):
        stim, names = made[d.image_set]
        spec, split, flat = config.image_set(d.image_set), splits[d.image_set], config.for_dataset(d)
        folder = root / d.name
        _write_images(folder / "images", stim, names, spec, written)
        _write_dataset_yaml(folder, f"{config.name}_{d.name}", d.modality, config)
        subjects = {}
        for s in range(d.n_subjects):
            rng = _rng(config.seed, _DATASET, j, s)
            if d.modality == "fmri":
                data = simulate_fmri_subject(flat, stim, split, rng, n_average=d.n_average)
            else:
                data = simulate_eeg_subject(flat, stim, split, rng, modality=d.modality)
            _write_subject(folder / f"subj{s + 1:02d}", data, names, split)
            subjects[f"subj{s + 1:02d}"] = {
                "n_trials": int(data.responses.shape[0]),
                "n_voxels": int(data.responses.shape[1]),
            }
        report["datasets"][d.name] = {"path": d.name, "name": f"{config.name}_{d.name}", "modality": d.modality,
                                      "image_set": d.image_set, "subjects": subjects}  # fmt: skip
    manifest = {"config": config.to_dict(), "report": report}
    (root / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return report
