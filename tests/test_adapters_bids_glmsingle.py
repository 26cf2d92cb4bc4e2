"""BIDS events + GLMsingle betas: volume and surface, .npy / .hdf5 / .mat v7.3 outputs, prepared into the store
the folder format makes of the same data; each user-fixable mismatch as one error naming its file."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import assert_check_counts_store
from fixtures.formats import IMG, decode_id
from fixtures.glmsingle import MASK_OPTION, MESH_OPTION, MODEL, RUN_IMAGES, write_bids_glmsingle

from afo.data import bids_glmsingle, folder
from afo.data.check import check_dataset
from afo.data.files import DatasetFileNotFoundError, DatasetFormatError
from afo.data.options import AdapterOptionError
from afo.data.store import PreparedStore

GEOMETRY = ("affine", "volume_shape")  # volume geometry the folder format cannot express


def write_as_folder(root: Path, bids_root: Path, truth: dict, space: str) -> Path:
    """The same experiment in the folder format: kept voxels (mask > 0, or vertices with a finite beta) as columns."""
    (root / "images").mkdir(parents=True)
    (root / "dataset.yaml").write_text("name: bids_glmsingle\nmodality: fmri\n")
    for image in (bids_root / "stimuli").iterdir():
        shutil.copy(image, root / "images" / image.name)
    for subject, t in truth["subjects"].items():
        betas = t["betas"]
        if space == "volume":
            keep = t["mask"] > 0
            responses, coords = betas[keep].T, nib.affines.apply_affine(truth["affine"], np.argwhere(keep))
        else:
            keep = np.isfinite(betas[:, 0, 0, :]).any(axis=1)
            responses, coords = betas[keep, 0, 0, :].T, t["coords"][keep]
        (root / subject).mkdir()
        np.save(root / subject / "responses.npy", responses.astype(np.float32))
        np.save(root / subject / "coords.npy", coords.astype(np.float32))
        pd.DataFrame({"image": t["names"]}).to_csv(root / subject / "trials.csv", index=False)
    return root


def _items(f: h5py.File) -> dict[str, h5py.Dataset | h5py.Group]:
    found: dict = {}
    f.visititems(lambda name, obj: found.setdefault(name, obj))
    return found


def assert_same_store(path: Path, reference: Path, volume: bool) -> None:
    with h5py.File(path, "r") as a, h5py.File(reference, "r") as b:
        assert {k: v for k, v in a.attrs.items() if k != "source"} == {
            k: v for k, v in b.attrs.items() if k != "source"
        }
        items, ref_items = _items(a), _items(b)
        assert sorted(items) == sorted(ref_items)
        for name, obj in items.items():
            attrs = {k: v for k, v in obj.attrs.items() if k not in GEOMETRY}
            assert attrs.keys() == ref_items[name].attrs.keys(), name
            for key, value in attrs.items():
                np.testing.assert_array_equal(value, ref_items[name].attrs[key], err_msg=f"{name}.{key}")
            if isinstance(obj, h5py.Dataset):
                np.testing.assert_array_equal(obj[()], ref_items[name][()], err_msg=name)
        for subject in a["subjects"]:
            assert ("affine" in a["subjects"][subject].attrs) == volume


CASES = [("volume", "npy"), ("volume", "mat"), ("volume", "hdf5"), ("surface", "npy"), ("surface", "mat")]


@pytest.mark.parametrize(("space", "output"), CASES)
def test_store_equals_the_folder_format_store(tmp_path, space, output):
    root = tmp_path / "bids"
    truth = write_bids_glmsingle(root, space=space, output=output)
    options = {"mask": MASK_OPTION} if space == "volume" else {"mesh": MESH_OPTION}
    out = tmp_path / "bids.h5"
    report = bids_glmsingle.prepare(root, out, image_size=IMG, options=options)
    assert report["subjects"]["sub-01"]["runs"] == ["run-1", "run-2"]
    reference = tmp_path / "folder.h5"
    folder.prepare(write_as_folder(tmp_path / "folder", root, truth, space), reference, image_size=IMG)
    assert_same_store(out, reference, volume=space == "volume")
    with PreparedStore(out) as store:
        images = store.images()
        for subject in truth["subjects"]:
            shown = [decode_id(images[r]) - 1 for r in store.trial_image(subject)]
            assert shown == [i for run in RUN_IMAGES for i in run]  # trial order: runs, then onsets
            split = store.trial_split(subject)
            repeated = np.isin(shown, [0, 1, 2])
            assert (split[repeated] == 2).all() and store.subject_attrs(subject)["nc_source"] == "repeats"
            if space == "volume":
                np.testing.assert_allclose(store.subject_attrs(subject)["affine"], truth["affine"].ravel())
    if space == "surface":  # every kept vertex has finite betas
        assert_check_counts_store("bids_glmsingle", root, options, out)
    else:  # the mask keeps voxel (0, 0, 0), NaN on every trial: counted, and masked in the store
        assert [r["nan_voxels"] for r in check_dataset("bids_glmsingle", root, options)] == [1, 1]


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "lab"
    write_bids_glmsingle(root, subjects=("01",))
    return root, {"mask": MASK_OPTION}


def _events(root: Path, run: int) -> Path:
    return root / "sub-01" / "func" / f"sub-01_task-images_run-{run}_events.tsv"


def _check(root: Path, options: dict) -> None:
    bids_glmsingle.check(root, options, read_data=False)


def test_trial_count_mismatch_names_the_betas(lab):
    root, options = lab
    lines = _events(root, 2).read_text().splitlines()
    _events(root, 2).write_text("\n".join(lines[:-2]) + "\n")  # drop the last trial and its fixation
    with pytest.raises(DatasetFormatError, match=rf"{MODEL}\.npy: field 'betasmd' has 20 trials but .* 19 stimuli"):
        _check(root, options)


def test_missing_stim_file_names_the_events_line(lab):
    root, options = lab
    (root / "stimuli" / "img05.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"run-1_events\.tsv: field 'stim_file' names 'img05\.png' on line 10"):
        _check(root, options)


def test_missing_and_reordered_runs(lab):
    root, options = lab
    with pytest.raises(DatasetFormatError, match=r"DESIGNINFO\.npy: field 'numtrialrun' .*\(runs out of order\)"):
        _check(root, {**options, "runs": [2, 1]})
    _events(root, 1).rename(root / "moved.tsv")
    with pytest.raises(DatasetFileNotFoundError, match=r"func: events of run\(s\) \[1\] are missing"):
        _check(root, options)
    with pytest.raises(DatasetFileNotFoundError, match=r"no events file of run\(s\) \[1\]"):
        _check(root, {**options, "runs": [1, 2]})


def test_mask_of_another_grid(lab):
    root, options = lab
    nib.save(nib.Nifti1Image(np.ones((4, 3, 3), np.uint8), np.eye(4)), root / "other.nii.gz")
    with pytest.raises(DatasetFormatError, match=r"other\.nii\.gz: field 'shape' is \(4, 3, 3\), another grid"):
        _check(root, {"mask": "other.nii.gz"})


def test_stimorder_disagreeing_with_the_events(lab):
    root, options = lab
    path = _events(root, 2)
    path.write_text(path.read_text().replace("img08.png", "img07.png"))  # run 2's first trial now shows img07
    with pytest.raises(DatasetFormatError, match=r"DESIGNINFO\.npy: field 'stimorder' disagrees with .*run-2_events"):
        _check(root, options)


def test_without_mask_keeps_finite_voxels_in_voxel_units(lab, tmp_path):
    root, _ = lab
    with pytest.warns(UserWarning, match="no option mask"):
        rows = bids_glmsingle.check(root, {})
    assert rows[0]["voxels"] == 4 * 3 * 2 - 1 and rows[0]["nan_voxels"] == 0


def test_pickles_are_read_only_from_below_the_root(lab, tmp_path):
    root, options = lab
    outside = tmp_path / "elsewhere"
    shutil.copytree(root / "derivatives" / "GLMsingle" / "sub-01", outside)
    with pytest.raises(AdapterOptionError, match=r"outside the dataset root .* pickles"):
        _check(root, {**options, "glmsingle_dir": str(outside)})


def test_surface_betas_without_a_mesh(tmp_path):
    root = tmp_path / "surf"
    write_bids_glmsingle(root, space="surface", output="npy", subjects=("01",))
    with pytest.raises(DatasetFormatError, match=r"field 'betasmd' has shape \(10, 1, 1\) x 20 trials.*option mesh"):
        _check(root, {})
