"""Inputs are read as meant or refused with the file named (docs/inputs.md): images, responses, noise ceilings,
splits, ROI tables, subject folders, and which read failures count as a bad file."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import write_folder_dataset
from PIL import Image

from afo.cli import main
from afo.data.files import DatasetFormatError, reading
from afo.data.folder import FolderDatasetError, prepare
from afo.data.media import load_image, resize_image
from afo.data.noise_ceiling import NoiseCeilingError, check_percent
from afo.data.options import AdapterOptionError, check_choice, resolve_options
from afo.data.store import PreparedStore, StoreError, StoreWriter
from afo.errors import UserError

# ---------------------------------------------------------------------------------------------------- images

GRADIENT16 = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))  # full 16-bit range, mean 32767.5


def _replace_image(root, name, save) -> None:
    """Overwrite images/<name> with the file that ``save(path)`` writes (same name, so trials.csv still matches)."""
    save(root / "images" / name)


def test_16bit_png_scaled_by_its_range(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(GRADIENT16).save(path)
    assert Image.open(path).mode.startswith("I")  # Pillow keeps all 16 bits: convert("RGB") alone clips to white
    rgb = np.asarray(load_image(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    np.testing.assert_array_equal(rgb[0, [0, -1], 0], [0, 255])
    assert abs(rgb.mean() - 127.5) < 0.6
    # the same through resize_image on an opened file (the path decoding's gallery takes)
    assert abs(resize_image(Image.open(path), 64).mean() - 127.5) < 0.6


def test_16bit_png_in_a_folder_dataset_is_stored_at_its_real_brightness(folder_dataset, tmp_path):
    _replace_image(folder_dataset, "img_003.png", lambda p: Image.fromarray(GRADIENT16).save(p))
    prepare(folder_dataset, tmp_path / "s.h5", image_size=16)
    with PreparedStore(tmp_path / "s.h5") as store:
        stored = store.images()[store.image_names().index("img_003.png")]
    assert abs(stored.mean() - 127.5) < 3  # was 254 (almost white) before the scaling


def test_float_tiff_in_unit_range_scaled_by_255(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray((GRADIENT16 / 65535).astype(np.float32)).save(path)
    rgb = np.asarray(load_image(path))
    np.testing.assert_array_equal(rgb[0, [0, -1], 0], [0, 255])
    assert abs(rgb.mean() - 127.5) < 0.6  # was 0.02 (black)


@pytest.mark.parametrize("values", [np.linspace(0, 255, 64), np.linspace(-1, 1, 64)])
def test_float_tiff_outside_unit_range_refused_with_file_named(tmp_path, values):
    path = tmp_path / "f.tif"
    Image.fromarray(np.tile(values.astype(np.float32), (8, 1))).save(path)
    with pytest.raises(StoreError, match=r"f\.tif: floating-point samples span .*Fix:"):
        load_image(path)


def test_32bit_integer_image_refused(tmp_path):
    path = tmp_path / "i32.tif"
    Image.fromarray(np.tile(np.arange(64, dtype=np.int32) * 1000, (8, 1))).save(path)
    with pytest.raises(StoreError, match=r"i32\.tif: .*no unambiguous 8-bit reading"):
        load_image(path)


def _frames(n: int) -> list[Image.Image]:
    return [Image.fromarray(np.full((8, 8), 40 * k, np.uint8)) for k in range(n)]


@pytest.mark.parametrize("name", ["img_004.gif", "img_004.tif"])
def test_multi_frame_image_refused_with_file_named(folder_dataset, tmp_path, name):
    first, *rest = _frames(3)
    first.save(folder_dataset / "images" / name, save_all=True, append_images=rest)
    trials = pd.read_csv(folder_dataset / "subj01" / "trials.csv")
    trials["image"] = trials["image"].replace("img_004.png", name)
    trials.to_csv(folder_dataset / "subj01" / "trials.csv", index=False)
    with pytest.raises(StoreError, match=rf"{name}: has 3 frames .*Fix: save the frame"):
        prepare(folder_dataset, tmp_path / "s.h5", image_size=8)
    assert not (tmp_path / "s.h5").exists()


def test_single_frame_gif_still_read(tmp_path):
    _frames(1)[0].save(tmp_path / "one.gif")
    assert np.asarray(load_image(tmp_path / "one.gif")).shape == (8, 8, 3)


# ---------------------------------------------------------------------------------------------------- noise ceiling


@pytest.mark.parametrize(
    "values, match",
    [
        (np.linspace(0.05, 0.9, 10), r"reads as a fraction.*multiply it by 100"),
        (np.linspace(10, 120, 10), r"values span 10 to 120, outside the 0-100"),
        (np.linspace(-5, 50, 10), r"values span -5 to 50, outside the 0-100"),
    ],
)
def test_noise_ceiling_not_in_percent_refused(folder_dataset, tmp_path, values, match):
    path = folder_dataset / "subj01" / "noise_ceiling.npy"
    np.save(path, values.astype(np.float32))
    with pytest.raises(NoiseCeilingError, match=match) as info:
        prepare(folder_dataset, tmp_path / "s.h5", image_size=8)
    assert str(path) in str(info.value) and "Fix:" in str(info.value)
    assert isinstance(info.value, UserError)


def test_noise_ceiling_percent_with_nan_and_few_small_values_accepted():
    check_percent(np.array([np.nan, 0.0, 0.0, 0.4, 0.7, 0.0, 0.0]), "nc.npy")  # a few near-zero voxels: percent
    check_percent(np.array([np.nan, 3.0, 45.5, 100.0]), "nc.npy")
    with pytest.raises(NoiseCeilingError, match="inf"):
        check_percent(np.array([np.inf, 3.0]), "nc.npy")


def test_store_checks_a_noise_ceiling_given_by_an_adapter(tmp_path):
    with pytest.raises(NoiseCeilingError, match=r"tiny subject s1: the noise ceiling: .*fraction"):
        _write_store(tmp_path / "s.h5", np.random.default_rng(0).normal(size=(6, 8)), nc=np.full(8, 0.3))


# ---------------------------------------------------------------------------------------------------- splits


def _write_store(path, responses, split=("train", "train", "val", "test", "test", "train"), nc=None):
    with StoreWriter(path, name="tiny", modality="fmri", source="test", image_size=4) as w:
        w.write_images([np.zeros((4, 4, 3), np.uint8)] * 6, [f"i{k}" for k in range(6)])
        sw = w.subject("s1", responses.shape[1])
        sw.append(responses, np.arange(len(responses)), list(split)[: len(responses)])
        return sw.finish(np.zeros((responses.shape[1], 3)), noise_ceiling=nc)


def test_split_column_without_test_trials_refused(folder_dataset, tmp_path):
    path = folder_dataset / "subj02" / "trials.csv"
    trials = pd.read_csv(path)
    trials["split"] = trials["split"].replace("test", "val")
    trials.to_csv(path, index=False)
    with pytest.raises(FolderDatasetError, match=r"subj02/trials\.csv: no test trials\. Fix: label the trials"):
        prepare(folder_dataset, tmp_path / "s.h5", image_size=8)
    assert not (tmp_path / "s.h5").exists()


def test_default_split_without_test_images_refused(tmp_path):
    # 10 images, none repeated: 4 % of 10 rounds to no test image
    root = write_folder_dataset(tmp_path / "d", n_images=10, n_repeated=0, with_split=False, subjects=("s1",))
    with pytest.raises(FolderDatasetError, match=r"s1/trials\.csv: no test trials\. Fix: add a `split` column"):
        prepare(root, tmp_path / "s.h5", image_size=8)


def test_store_refuses_a_subject_without_test_or_train_trials(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(StoreError, match=r"tiny subject s1: no test trials"):
        _write_store(tmp_path / "a.h5", data, split=["train", "train", "val", "train", "val", "train"])
    with pytest.raises(StoreError, match=r"tiny subject s1: no train trials"):
        _write_store(tmp_path / "b.h5", data, split=["test", "test", "val", "test", "val", "test"])


# ---------------------------------------------------------------------------------------------------- responses


def test_voxel_without_finite_training_value_masked_and_reported(folder_dataset, tmp_path, capsys):
    path = folder_dataset / "subj01" / "responses.npy"
    r = np.load(path)
    train = (pd.read_csv(folder_dataset / "subj01" / "trials.csv")["split"] == "train").to_numpy()
    r[train, 6] = np.nan  # finite on val and test trials only
    np.save(path, r)
    report = prepare(folder_dataset, tmp_path / "s.h5", image_size=8)["subjects"]["subj01"]
    assert report["no_train_voxels"] == 1 and report["n_bad_voxels"] == 1
    assert f"{path}: 1 bad voxel(s) masked" in capsys.readouterr().err
    with PreparedStore(tmp_path / "s.h5") as store:
        assert store.bad_voxel("subj01").tolist() == [v == 6 for v in range(10)]
        assert json.loads(store.subject_attrs("subj01")["bad_voxel_reasons"])["no_train"] == [6]
        assert np.isnan(store.noise_ceiling("subj01")[6])
        assert np.isfinite(store.responses("subj01")[~train, 6]).all()  # kept in place, only masked


def test_inf_values_masked_and_reported_as_inf(folder_dataset, tmp_path, capsys):
    path = folder_dataset / "subj01" / "responses.npy"
    r = np.load(path)
    r[:, 2] = np.inf  # a voxel with no finite value
    r[[0, 5], 4] = -np.inf
    np.save(path, r)
    report = prepare(folder_dataset, tmp_path / "s.h5", image_size=8)["subjects"]["subj01"]
    assert report["inf_values"] == len(r) + 2 and report["inf_voxels"] == 2
    assert report["all_nan_voxels"] == 1
    err = capsys.readouterr().err
    assert f"{path}: {len(r) + 2} value(s) in 2 voxel(s) are +-inf" in err
    with PreparedStore(tmp_path / "s.h5") as store:
        stored = store.responses("subj01")
        assert not np.isinf(stored).any() and np.isnan(stored[[0, 5], 4]).all()
        assert store.bad_voxel("subj01")[2] and not store.bad_voxel("subj01")[4]
        assert store.subject_attrs("subj01")["n_inf_values"] == len(r) + 2


def test_complex_responses_refused_with_file_named(folder_dataset, tmp_path):
    path = folder_dataset / "subj01" / "responses.npy"
    np.save(path, np.load(path).astype(np.complex64))
    with pytest.raises(FolderDatasetError, match=r"subj01/responses\.npy: holds complex numbers.*Fix:"):
        prepare(folder_dataset, tmp_path / "s.h5", image_size=8)
    with pytest.raises(StoreError, match=r"tiny subject s1: responses have dtype complex128"):
        _write_store(tmp_path / "c.h5", np.ones((6, 2)) + 1j)


@pytest.mark.parametrize("name", ["responses.npy", "coords.npy", "noise_ceiling.npy"])
@pytest.mark.parametrize(
    "damage",
    [
        lambda path: np.save(path, np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True),
        lambda path: path.write_bytes(path.read_bytes()[:-7]),  # truncated
        lambda path: path.write_bytes(b""),
        lambda path: path.write_bytes(b"not numpy at all" * 8),
    ],
    ids=["object", "truncated", "empty", "garbage"],
)
def test_unreadable_npy_names_the_file(folder_dataset, tmp_path, name, damage):
    path = folder_dataset / "subj01" / name
    if name == "noise_ceiling.npy":
        np.save(path, np.linspace(10, 90, 10).astype(np.float32))
    damage(path)
    with pytest.raises(FolderDatasetError, match=rf"subj01/{name}: .*Fix: save .* with numpy\.save"):
        prepare(folder_dataset, tmp_path / "s.h5", image_size=8)


# ---------------------------------------------------------------------------------------------------- rois.csv


def _edit_rois(root, edit) -> None:
    path = root / "subj01" / "rois.csv"
    table = pd.read_csv(path)
    edit(table).to_csv(path, index=False)


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda t: t.assign(voxel=t["voxel"].astype(float).where(t.index != 3, 0.5)),
            r"line 5: field `voxel` is '0\.5', not an integer",
        ),
        (
            lambda t: t.assign(voxel=t["voxel"].astype(str).where(t.index != 1, "v1")),
            r"line 3: field `voxel` is 'v1', not an integer",
        ),
        (lambda t: pd.concat([t, t.iloc[[2]].assign(roi="late")]), r"voxel 2 has 2 rows \(lines \[4, 12\]\)"),
        (
            lambda t: t.assign(voxel=t["voxel"].where(t.index != 9, 10)),
            r"line 11: field `voxel` is 10, outside \[0, 10\)",
        ),
        (lambda t: t.assign(voxel=t["voxel"].where(t.index != 0, -1)), r"line 2: field `voxel` is -1, outside"),
    ],
    ids=["fraction", "text", "duplicate", "too-large", "negative"],
)
def test_bad_roi_rows_refused_with_file_row_and_fix(folder_dataset, tmp_path, edit, match):
    _edit_rois(folder_dataset, edit)
    with pytest.raises(FolderDatasetError, match=r"subj01/rois\.csv: " + match) as info:
        prepare(folder_dataset, tmp_path / "s.h5", image_size=8)
    assert "Fix:" in str(info.value)


def test_whole_float_voxels_and_partial_tables_accepted(folder_dataset, tmp_path):
    # "3.0" is voxel 3 (pandas writes ints so once a column held NaN); voxels without a row have no ROI
    _edit_rois(folder_dataset, lambda t: t.iloc[2:].assign(voxel=t["voxel"].iloc[2:].astype(float)))
    prepare(folder_dataset, tmp_path / "s.h5", image_size=8)
    with PreparedStore(tmp_path / "s.h5") as store:
        assert list(store.rois("subj01", "roi")[:3]) == ["", "", "early"]


# ---------------------------------------------------------------------------------------------------- subject folders


def test_subject_folder_without_responses_reported(folder_dataset, tmp_path):
    sub = folder_dataset / "subj03"
    sub.mkdir()
    for name in ("trials.csv", "coords.npy"):
        (sub / name).write_bytes((folder_dataset / "subj01" / name).read_bytes())
    with pytest.raises(
        FolderDatasetError, match=r"subj03: a subject folder without responses\.npy .*Fix: add responses\.npy"
    ):
        prepare(folder_dataset, tmp_path / "s.h5", image_size=8)


# ---------------------------------------------------------------------------------------------------- errors


def test_reading_names_the_file_for_library_failures(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((50, 50)))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetFormatError, match=r"a\.npy: could not read betas \(ValueError"):
        with reading(path, "betas", "a float array"):
            np.load(path)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["x"] = np.zeros(2)
    with pytest.raises(DatasetFormatError, match=r"b\.h5: could not read .*KeyError"):
        with h5py.File(tmp_path / "b.h5", "r") as f, reading(tmp_path / "b.h5", "betas", "dataset betas"):
            f["betas"]


@pytest.mark.parametrize("bug", [lambda: [][1], lambda: {}["key"], lambda: int("x"), lambda: np.zeros(3).reshape(2, 2)])
def test_reading_keeps_bugs_as_bugs(tmp_path, bug):
    """A ValueError/KeyError/IndexError raised by our own code inside reading() keeps its type and traceback."""
    with pytest.raises((IndexError, KeyError, ValueError)) as info:
        with reading(tmp_path / "x", "x", "y"):
            bug()
    assert not isinstance(info.value, UserError)


def test_adapter_option_errors_are_user_errors(folder_dataset, tmp_path, capsys):
    with pytest.raises(AdapterOptionError):
        resolve_options("nsd", {"spase": "func1mm"}, {"space": "func1pt8mm"})
    with pytest.raises(AdapterOptionError, match=r"option space='x' is not one of"):
        check_choice("nsd", "space", "x", ["func1pt8mm"])
    assert issubclass(AdapterOptionError, UserError)
    code = main(
        ["prepare", "folder", "--root", str(folder_dataset), "--out", str(tmp_path / "s.h5"), "--options", '{"sed": 1}']
    )
    err = capsys.readouterr().err
    assert code == 2 and "unknown option(s) ['sed']" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda root: (root / "dataset.yaml").write_text("name: [unclosed\n"), r"dataset\.yaml: not valid YAML"),
        (
            lambda root: (root / "subj01" / "trials.csv").write_bytes(b""),
            r"subj01/trials\.csv: not a readable CSV table \(EmptyDataError",
        ),
        (
            lambda root: (root / "subj01" / "rois.csv").write_bytes(b'voxel,roi\n1,"early\n'),
            r"subj01/rois\.csv: not a readable CSV table \(ParserError",
        ),
        (
            lambda root: (root / "subj01" / "rois.csv").write_bytes(b"voxel,roi\n1,\xff\xfe\n"),
            r"subj01/rois\.csv: not a readable CSV table \(UnicodeDecodeError",
        ),
    ],
    ids=["yaml", "empty-trials", "unclosed-quote", "not-utf8"],
)
def test_unparseable_text_files_name_the_file(folder_dataset, tmp_path, damage, match):
    damage(folder_dataset)
    with pytest.raises(FolderDatasetError, match=match + r".*Fix:"):
        prepare(folder_dataset, tmp_path / "s.h5", image_size=8)


def test_folder_seed_option_must_be_an_integer(folder_dataset, tmp_path):
    with pytest.raises(AdapterOptionError, match="option seed must be an integer, got 'one'"):
        prepare(folder_dataset, tmp_path / "s.h5", image_size=8, options={"seed": "one"})


def test_pickle_of_an_unknown_class_names_the_file(tmp_path):
    from afo.data.files import load_trusted_pickle

    path = tmp_path / "data.pkl"
    # protocol-0 pickle of an instance of nowhere_module.Gone (written by hand: the class does not exist here)
    path.write_bytes(b"cnowhere_module\nGone\np0\n(tRp1\n.")
    with pytest.raises(DatasetFormatError, match=r"data\.pkl: the EEG dict is a pickle of a class .*nowhere_module"):
        load_trusted_pickle(path, "the EEG dict", "a dict")


def test_unreadable_video_names_the_file(tmp_path):
    from afo.data.media import middle_frame, video_duration

    path = tmp_path / "clip.mp4"
    path.write_bytes(b"not a video" * 64)
    for read in (video_duration, middle_frame):
        with pytest.raises(DatasetFormatError, match=r"clip\.mp4: not a video PyAV can open"):
            read(path)
