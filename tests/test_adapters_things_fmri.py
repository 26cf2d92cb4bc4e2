"""THINGS-fMRI adapter on a tiny copy of the table release (pandas HDF ResponseData + metadata CSVs)."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from fixtures.formats import IMG, decode_id, write_things_fmri

from afo.data import things_fmri
from afo.data.files import DatasetFormatError
from afo.data.store import PreparedStore


def _zscore_by_session(x: np.ndarray, sessions: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for s in np.unique(sessions):
        rows = sessions == s
        out[rows] = (x[rows] - x[rows].mean(0)) / x[rows].std(0)
    return out


@pytest.mark.parametrize(
    ("table_format", "labels"), [("fixed", "int"), ("fixed", "str"), ("table", "str"), ("table", "int")]
)
def test_things_fmri(tmp_path, table_format, labels):
    """("fixed", "int") is the release: pandas fixed format, columns voxel_id, 0, 1, ... (a pickled index)."""
    truth = write_things_fmri(tmp_path / "root", table_format=table_format, labels=labels)
    out = tmp_path / "things.h5"
    things_fmri.prepare(tmp_path / "root", out, image_size=IMG, options={})
    with PreparedStore(out) as store:
        assert store.subjects == ["sub-01", "sub-02"]
        names, images = store.image_names(), store.images()
        assert store.image_sources() == [f"things:{n[:-4]}" for n in names]  # THINGS file names, for the overlap step
        for sub, t in truth["subjects"].items():
            keep = np.flatnonzero(t["member"].any(1))  # visual voxels only
            info = store.info(sub)
            assert info.n_trials == len(t["stim"]) == 26 and info.n_voxels == keep.size
            rows = store.trial_image(sub)
            assert [names[r] for r in rows] == t["stim"]["stimulus"].tolist()
            assert [decode_id(images[r]) for r in rows] == [truth["image_id"][s] for s in t["stim"]["stimulus"]]
            expected = _zscore_by_session(t["values"][keep].T, t["stim"]["session"].to_numpy())
            np.testing.assert_allclose(store.responses(sub), expected, atol=1e-5)
            split = store.trial_split(sub)
            np.testing.assert_array_equal(split == 2, t["stim"]["trial_type"].to_numpy() == "test")
            np.testing.assert_allclose(store.noise_ceiling(sub), t["vox"]["nc_testset"].to_numpy()[keep], rtol=1e-6)
            np.testing.assert_allclose(
                store.coords(sub), nib.affines.apply_affine(truth["affine"], t["xyz"][keep]), atol=1e-5
            )
            labels = store.rois(sub, "things")
            assert labels[0] == "V2"  # voxel 0 is in V2 and lFFA: the first in visual_rois order wins
            assert set(store.rois(sub, "glasser")) <= {"V1", "FFC"}


def test_malformed(tmp_path):
    root = tmp_path / "root"
    truth = write_things_fmri(root, subjects=(1,))
    with pytest.raises(ValueError, match="unknown option"):
        things_fmri.prepare(root, tmp_path / "x.h5", image_size=IMG, options={"visual_roi": ["V1"]})
    vox = truth["subjects"]["sub-01"]["vox"].drop(columns=["voxel_y"])
    vox.to_csv(root / "betas_csv" / "sub-01_VoxelMetadata.csv", index=False)
    with pytest.raises(DatasetFormatError, match=r"sub-01_VoxelMetadata\.csv.*'voxel_y'.*missing"):
        things_fmri.prepare(root, tmp_path / "x.h5", image_size=IMG, options={})


def test_release_table_is_read_in_row_slices(tmp_path, monkeypatch):
    """The released table (fixed format, integer trial labels) is read a few voxel rows at a time, never whole."""
    root = tmp_path / "root"
    truth = write_things_fmri(root, subjects=(1,))
    # 26 trials + voxel_id = 27 float64 columns; 27 * 8 * 7 bytes -> 7 rows per read
    monkeypatch.setattr(things_fmri, "READ_BYTES", 27 * 8 * 7)
    reads = []
    original = pd.HDFStore.select

    def spy(self, key, *args, start=None, stop=None, **kwargs):
        reads.append((start, stop))
        return original(self, key, *args, start=start, stop=stop, **kwargs)

    monkeypatch.setattr(pd.HDFStore, "select", spy)
    out = tmp_path / "things.h5"
    things_fmri.prepare(root, out, image_size=IMG, options={})
    assert reads and all(start is not None and stop is not None and stop - start <= 7 for start, stop in reads)
    t = truth["subjects"]["sub-01"]
    keep = np.flatnonzero(t["member"].any(1))
    with PreparedStore(out) as store:
        expected = _zscore_by_session(t["values"][keep].T, t["stim"]["session"].to_numpy())
        np.testing.assert_allclose(store.responses("sub-01"), expected, atol=1e-5)


def test_table_mismatches_name_the_file(tmp_path):
    root = tmp_path / "root"
    truth = write_things_fmri(root, subjects=(1,))
    table = root / "betas_csv" / "sub-01_ResponseData.h5"
    frame = pd.read_hdf(table)
    assert frame.columns[:3].tolist() == ["voxel_id", 0, 1]  # the release's mixed labels
    # a trial column missing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        frame.drop(columns=[5]).to_hdf(table, key="ResponseData")
    with pytest.raises(DatasetFormatError, match=r"sub-01_ResponseData\.h5.*'5' is missing.*StimulusMetadata"):
        things_fmri.prepare(root, tmp_path / "x.h5", image_size=IMG, options={})
    # voxel rows in another order than VoxelMetadata
    shuffled = frame.iloc[::-1].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        shuffled.to_hdf(table, key="ResponseData")
    with pytest.raises(DatasetFormatError, match=r"sub-01_ResponseData\.h5: row 0 has voxel_id 39.*VoxelMetadata"):
        things_fmri.prepare(root, tmp_path / "x.h5", image_size=IMG, options={})
    assert not (tmp_path / "x.h5").exists()
    # not an HDF5 file at all
    table.write_bytes(b"not hdf5")
    with pytest.raises(DatasetFormatError, match=r"sub-01_ResponseData\.h5: not a readable HDF5 file"):
        things_fmri.prepare(root, tmp_path / "x.h5", image_size=IMG, options={})
    assert truth["subjects"]["sub-01"]["values"].shape == (40, 26)
