import numpy as np
import pandas as pd
import pytest
from conftest import write_folder_dataset

from afo.cli import main
from afo.data.folder import FolderDatasetError, prepare
from afo.data.store import PreparedStore
from afo.errors import UserError


def test_round_trip(folder_dataset, tmp_path):
    report = prepare(folder_dataset, tmp_path / "s.h5", image_size=16)
    assert report["n_images"] == 24 and set(report["subjects"]) == {"subj01", "subj02"}
    with PreparedStore(tmp_path / "s.h5") as store:
        names = store.image_names()
        trials = pd.read_csv(folder_dataset / "subj01" / "trials.csv")
        # trial -> image mapping survives by name
        assert [names[i] for i in store.trial_image("subj01")] == trials["image"].tolist()
        np.testing.assert_array_equal(store.responses("subj01"), np.load(folder_dataset / "subj01" / "responses.npy"))
        np.testing.assert_array_equal(store.coords("subj01"), np.load(folder_dataset / "subj01" / "coords.npy"))
        assert store.images().shape == (24, 16, 16, 3)
        assert list(store.rois("subj01", "roi")[:2]) == ["early", "early"]
        assert store.subject_attrs("subj01")["nc_source"] == "repeats"
        nc = store.noise_ceiling("subj01")
        assert np.isfinite(nc).all() and (nc > 50).mean() > 0.5  # low-noise synthetic voxels
        codes = dict(zip(trials["image"], store.trial_split("subj01")))
        assert codes["img_000.png"] == 2 and codes["img_005.png"] == 1 and codes["img_010.png"] == 0


def test_default_split_when_no_column(tmp_path):
    root = write_folder_dataset(tmp_path / "d", n_images=60, with_split=False)
    prepare(root, tmp_path / "s.h5", image_size=8)
    with PreparedStore(tmp_path / "s.h5") as store:
        split = store.image_split("subj01")
        assert all(split[i] == 2 for i in range(4))  # repeated images go to test
        assert sum(v == 0 for v in split.values()) > 40


def test_given_noise_ceiling_is_used(folder_dataset, tmp_path):
    np.save(folder_dataset / "subj01" / "noise_ceiling.npy", np.linspace(10, 90, 10).astype(np.float32))
    prepare(folder_dataset, tmp_path / "s.h5", image_size=8)
    with PreparedStore(tmp_path / "s.h5") as store:
        np.testing.assert_allclose(store.noise_ceiling("subj01"), np.linspace(10, 90, 10), rtol=1e-6)
        assert store.subject_attrs("subj01")["nc_source"] == "given"


def test_all_nan_voxel_masked_and_reported(folder_dataset, tmp_path, capsys):
    r = np.load(folder_dataset / "subj02" / "responses.npy")
    r[:, 3] = np.nan
    np.save(folder_dataset / "subj02" / "responses.npy", r)
    report = prepare(folder_dataset, tmp_path / "s.h5", image_size=8)
    assert report["subjects"]["subj02"]["all_nan_voxels"] == 1
    assert "subj02/responses.npy: 1 bad voxel(s) masked" in capsys.readouterr().err
    with PreparedStore(tmp_path / "s.h5") as store:
        assert store.bad_voxel("subj02")[3] and store.info("subj02").n_voxels == 10


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda root: (root / "subj01" / "coords.npy").unlink(), r"coords.npy: missing"),
        (
            lambda root: np.save(root / "subj01" / "coords.npy", np.zeros((9, 3), np.float32)),
            r"coords.npy: shape \(9, 3\) but responses.npy has 10 voxels",
        ),
        (
            lambda root: (root / "images" / "img_007.png").unlink(),
            r"trials.csv: field `image` names 1 file\(s\) absent from images/",
        ),
        (
            lambda root: np.save(root / "subj01" / "coords.npy", np.full((10, 3), np.inf, np.float32)),
            r"coords.npy: non-finite coordinates",
        ),
        (
            lambda root: (
                pd.read_csv(root / "subj01" / "trials.csv")
                .assign(split="training")
                .to_csv(root / "subj01" / "trials.csv", index=False)
            ),
            r"trials.csv: field `split` has unknown label\(s\) \['training'\]",
        ),
        (
            lambda root: (root / "dataset.yaml").write_text("name: x\nmodality: pet\n"),
            r"dataset.yaml: field `modality`",
        ),
        (lambda root: (root / "subj01" / "trials.csv").unlink(), r"trials.csv: missing"),
    ],
)
def test_bad_input_names_file_field_and_fix(folder_dataset, tmp_path, damage, match):
    damage(folder_dataset)
    with pytest.raises(FolderDatasetError, match=match) as info:
        prepare(folder_dataset, tmp_path / "s.h5", image_size=8)
    assert "Fix:" in str(info.value)
    assert not (tmp_path / "s.h5").exists()


def test_cli_reports_error_without_traceback(folder_dataset, tmp_path, capsys):
    (folder_dataset / "subj01" / "coords.npy").unlink()
    code = main(
        ["prepare", "folder", "--root", str(folder_dataset), "--out", str(tmp_path / "s.h5"), "--image-size", "8"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "coords.npy: missing" in err and "Traceback" not in err


def test_unknown_option_rejected(folder_dataset, tmp_path):
    with pytest.raises(UserError, match="unknown option"):
        prepare(folder_dataset, tmp_path / "s.h5", image_size=8, options={"sed": 1})


def test_bigbrain_option_concatenates_subjects(folder_dataset, tmp_path):
    """Subjects who saw the same images become one subject (paper 4.1): voxels side by side, trials aligned."""
    report = prepare(folder_dataset, tmp_path / "b.h5", image_size=16, options={"bigbrain": True})
    assert list(report["subjects"]) == ["bigbrain"] and report["subjects"]["bigbrain"]["subjects"] == [
        "subj01",
        "subj02",
    ]
    with PreparedStore(tmp_path / "b.h5") as store:
        assert store.subjects == ["bigbrain"]
        big = store.responses("bigbrain")
        assert big.shape[1] == 20 and set(store.rois("bigbrain", "roi")) >= {"early"}
        names = store.image_names()
        # Each row holds the same (image, presentation) for both subjects: subj01's first presentation of an image
        # sits beside subj02's first presentation of it.
        trials = pd.read_csv(folder_dataset / "subj02" / "trials.csv")
        r2 = np.load(folder_dataset / "subj02" / "responses.npy")
        first = {img: i for i, img in reversed(list(enumerate(trials["image"])))}
        rows = {}
        for row, i in enumerate(store.trial_image("bigbrain")):
            rows.setdefault(names[i], row)
        for img, trial in first.items():
            np.testing.assert_array_equal(big[rows[img], 10:], r2[trial])
    with pytest.raises(UserError, match="bigbrain must be true or false"):
        prepare(folder_dataset, tmp_path / "c.h5", image_size=16, options={"bigbrain": "yes"})
