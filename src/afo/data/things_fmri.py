"""THINGS-fMRI (Hebart et al. 2023): 3 subjects, 3T fMRI, single-trial responses in the table release.

Files read under ``root`` (sources of each format fact in brackets; [N] = the THINGS-data usage notebook
ViCCo-Group/THINGS-data MRI/notebooks/fmri_usage.ipynb, [P] = pandas' HDF writer, checked by writing frames)::

    betas_csv/sub-0X_ResponseData.h5        rows = voxels, columns ``voxel_id, 0, 1, ..., 9839`` [N: printed head,
                                            5 rows x 9841 columns]; trial column i is row i of StimulusMetadata
                                            [N: ``responses[stimdata.query(...).index]``]; one key, read by
                                            ``pd.read_hdf(path)`` [N]. Written by ``DataFrame.to_hdf`` in pandas'
                                            fixed format, where the mixed column index (a string and integers) is
                                            stored as a *pickled* object array [P]
    betas_csv/sub-0X_StimulusMetadata.csv   trial_type (train/test; catch trials are left out of the table [N]),
                                            session, run, subject_id, trial_id, stimulus (image file name),
                                            concept [N]
    betas_csv/sub-0X_VoxelMetadata.csv      voxel_id, subject_id, voxel_x/y/z, nc_singletrial, nc_testset
                                            (percent, e.g. 11.8), splithalf_*, prf-*, 0/1 ROI columns V1 ... IT,
                                            glasser-* [N: printed column list]
    brainmasks/sub-0X_space-T1w_brainmask.nii.gz   gives the affine that turns voxel_x/y/z into mm
    <images_dir>/<concept>/<stimulus>       the THINGS images (default images_dir: <root>/images, then
                                            <root>/object_images); found by file name if not in that layout

Trusted files only: reading ResponseData.h5's column labels unpickles them (pandas/PyTables do so for an
object index), and unpickling can run code. Open only tables you downloaded from the official release.

Voxels: those in any of ``visual_rois`` (default: the retinotopic and category-selective ROI columns, not
the Glasser parcels); ``visual_rois: null`` keeps every voxel. Responses are z-scored per voxel within each
session (option ``zscore``). Split: the repeated test images (trial_type 'test', 12 repeats) are the test
set; the train images are split train/val by image. Noise ceiling: ``nc_testset`` (percent, for the average
of the test repeats, which is how test scores are computed), or from repeats with ``noise_ceiling: repeats``.
ROI sets: ``things`` (first matching ROI column, in ``visual_rois`` order) and ``glasser`` (Glasser parcel).

Memory: the table is read through pandas (``HDFStore.select`` with ``start``/``stop``) in slices of voxel rows
of at most ``READ_BYTES`` (all trials each), z-scored, and transposed through a scratch HDF5 file beside the
output, so neither the whole table nor the whole subject sits in memory. Slices with no kept voxel are skipped.
Trial labels may be integers (the release) or strings '0', '1', ...; ``format="table"`` files are read too.

[unverified] the brain mask path (``brainmasks/sub-0X_space-T1w_brainmask.nii.gz``, as public third-party
loaders use it; option ``brainmask`` overrides it, ``{subject}`` is replaced by 01/02/03) and that
voxel_x/y/z index that mask's grid in x, y, z order (indices outside the grid are an error); the HDF key name
(``ResponseData`` is taken if present, else the file's only key).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import tables

from afo.data.adapter import CheckRow, DatasetAdapter, check_row
from afo.data.bigbrain import DirectTarget
from afo.data.files import DatasetFileNotFoundError, DatasetFormatError, find_first, format_error, reading, require_file
from afo.data.media import find_images, lazy_images
from afo.data.options import as_list, check_choice, parse_subject_number, progress, resolve_options, warn
from afo.data.overlap import things_source
from afo.data.responses import zscore_rows
from afo.data.splits import split_images
from afo.data.store import StoreWriter

ADAPTER = "things_fmri"
VISUAL_ROIS = [
    "V1",
    "V2",
    "V3",
    "hV4",
    "VO1",
    "VO2",
    "LO1 (prf)",
    "LO2 (prf)",
    "TO1",
    "TO2",
    "V3b",
    "V3a",
    "lEBA",
    "rEBA",
    "lFFA",
    "rFFA",
    "lOFA",
    "rOFA",
    "lSTS",
    "rSTS",
    "lPPA",
    "rPPA",
    "lRSC",
    "rRSC",
    "lTOS",
    "rTOS",
    "lLOC",
    "rLOC",
    "IT",
]
READ_BYTES = 128 * 2**20  # one read of voxel rows (all trials each, float64) stays under this

DEFAULTS: dict[str, Any] = {
    "name": "things_fmri",
    "subjects": None,
    "table_dir": None,
    "brainmask": None,
    "images_dir": None,
    "visual_rois": VISUAL_ROIS,
    "zscore": True,
    "noise_ceiling": "nc_testset",
    "val_fraction": 0.06,
    "seed": 0,
}

LAYOUT = (
    "<root>/betas_csv/sub-0X_{ResponseData.h5,StimulusMetadata.csv,VoxelMetadata.csv}, "
    "<root>/brainmasks/sub-0X_space-T1w_brainmask.nii.gz, <root>/images/<concept>/<stimulus>"
)
TABLE_EXPECTED = "a pandas HDF frame (DataFrame.to_hdf, key ResponseData): rows = voxels, columns voxel_id, 0, 1, ..."


class ResponseTable:
    """Row slices of the pandas HDF frame ``sub-0X_ResponseData.h5`` (rows = voxels), read through pandas/PyTables.

    The release writes the frame with ``DataFrame.to_hdf`` in pandas' fixed format, its columns
    ``['voxel_id', 0, 1, ..., N-1]``: a mixed column index, which pandas stores as a pickled object array, so only
    pandas/PyTables can read the labels (unpickling them: trusted files only). String labels ('0', '1', ...) and
    ``format="table"`` files are read the same way. Every read is a slice of rows (``HDFStore.select`` with
    ``start``/``stop``), so memory holds ``rows_per_read`` rows at a time, never the whole table.
    """

    def __init__(self, path: Path):
        self.path = require_file(path, "THINGS-fMRI response table", LAYOUT)
        try:
            self._store = pd.HDFStore(path, mode="r")
        except tables.HDF5ExtError as exc:  # PyTables' error for a file that is not HDF5 (or is damaged)
            raise DatasetFormatError(
                f"{path}: not a readable HDF5 file ({exc.__class__.__name__}); expected {TABLE_EXPECTED}"
            ) from exc
        try:
            with reading(path, "the pandas HDF response table", TABLE_EXPECTED):
                self._describe()
        except BaseException:
            self._store.close()  # nothing keeps the file open after an error
            raise

    def _describe(self) -> None:
        """Key, row count and column labels, without reading any data row."""
        self.key = self._pick_key([k.lstrip("/") for k in self._store.keys()])
        storer = self._store.get_storer(self.key)
        # a table knows its row count; a fixed-format frame keeps its row index in the node 'axis1'
        self.n_rows = int(storer.nrows) if storer.is_table else int(self._store.get_node(self.key).axis1.shape[0])
        labels = [_label(c) for c in self._store.select(self.key, start=0, stop=0).columns]
        self.position: dict[str, int] = {}
        for pos, label in enumerate(labels):
            if label in self.position:
                raise format_error(self.path, label, "appears twice among the column labels", TABLE_EXPECTED)
            self.position[label] = pos
        self.rows_per_read = max(1, READ_BYTES // (8 * max(len(labels), 1)))

    def _pick_key(self, keys: list[str]) -> str:
        if "ResponseData" in keys:
            return "ResponseData"
        if len(keys) == 1:
            return keys[0]
        raise format_error(self.path, "key", f"ResponseData is missing (keys: {keys})", TABLE_EXPECTED)

    def missing(self, columns: list[str]) -> list[str]:
        return [c for c in columns if c not in self.position]

    def read(self, start: int, stop: int, columns: list[str]) -> np.ndarray:
        """values [stop - start, len(columns)] (float64) of rows start..stop-1, in the order of ``columns``."""
        with reading(self.path, "the pandas HDF response table", TABLE_EXPECTED):
            frame = self._store.select(self.key, start=start, stop=stop)
        return frame.iloc[:, [self.position[c] for c in columns]].to_numpy(dtype=np.float64)

    def slices(self) -> Iterator[tuple[int, int]]:
        """(start, stop) of consecutive row slices covering the table."""
        for start in range(0, self.n_rows, self.rows_per_read):
            yield start, min(start + self.rows_per_read, self.n_rows)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> ResponseTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _label(value: Any) -> str:
    """Column label as text: 12, np.int64(12), 12.0 and '12' all become '12' (b'x' becomes 'x')."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _read_csv(path: Path, what: str, columns: list[str]) -> pd.DataFrame:
    require_file(path, what, LAYOUT)
    with reading(path, what, f"a CSV with columns {columns}"):
        frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise format_error(path, missing[0], "is missing", f"columns {columns} (has {list(frame.columns)[:12]} ...)")
    return frame


class Subject:
    def __init__(self, root: Path, number: int, opts: dict):
        self.number, self.name, self.opts = number, f"sub-{number:02d}", opts
        table_dir = Path(opts["table_dir"]) if opts["table_dir"] else root / "betas_csv"
        self.response_path = require_file(table_dir / f"{self.name}_ResponseData.h5", "response table", LAYOUT)
        self.stim_path = table_dir / f"{self.name}_StimulusMetadata.csv"
        self.stimuli = _read_csv(self.stim_path, "stimulus metadata", ["trial_type", "session", "stimulus"])
        self.voxel_path = table_dir / f"{self.name}_VoxelMetadata.csv"
        self.voxels = _read_csv(self.voxel_path, "voxel metadata", ["voxel_id", "voxel_x", "voxel_y", "voxel_z"])
        keep_trials = self.stimuli["trial_type"].astype(str) != "catch"  # not in the table; dropped if present
        self.trials = np.flatnonzero(keep_trials.to_numpy())
        self.columns = [str(int(t)) for t in self.trials]  # trial column i is row i of StimulusMetadata
        self.rois = self._visual_rois()
        self.rows = self._rows()
        self.mask_path = self._brainmask(root)
        with ResponseTable(self.response_path) as table:  # column labels and row count, before any long work
            self.check_table(table)

    def check_table(self, table: ResponseTable) -> None:
        """The response table has voxel_id, one column per kept trial, and one row per VoxelMetadata row."""
        if "voxel_id" not in table.position:
            raise format_error(self.response_path, "voxel_id", "is missing", "a voxel_id column beside the trials")
        missing = table.missing(self.columns)
        if missing:
            raise format_error(
                self.response_path,
                missing[0],
                f"is missing ({len(missing)} of {len(self.columns)} trial columns)",
                f"one column per row of {self.stim_path.name}, labelled 0, 1, 2, ... (integers or strings)",
            )
        if table.n_rows != len(self.voxels):
            raise DatasetFormatError(
                f"{self.response_path}: {table.n_rows} rows (voxels) but {self.voxel_path.name} has "
                f"{len(self.voxels)} rows; expected the same voxels in the same order (use the files of one download)"
            )

    def _visual_rois(self) -> list[str]:
        wanted = as_list(self.opts["visual_rois"])
        if not wanted:
            return []
        present = [r for r in wanted if r in self.voxels.columns]
        if not present:
            raise format_error(
                self.voxel_path,
                "ROI columns",
                f"has none of {wanted}",
                "0/1 ROI columns such as V1, V2, lFFA (or set visual_rois: null)",
            )
        return present

    def _rows(self) -> np.ndarray:
        if not self.rois:
            return np.arange(len(self.voxels))
        inside = (self.voxels[self.rois].fillna(0).to_numpy() > 0).any(axis=1)
        if not inside.any():
            raise format_error(self.voxel_path, "ROI columns", f"mark no voxel in {self.rois}", "some 1s")
        return np.flatnonzero(inside)

    def _brainmask(self, root: Path) -> Path:
        given = self.opts["brainmask"]
        if given:
            return require_file(str(given).replace("{subject}", f"{self.number:02d}"), "brain mask", LAYOUT)
        path = find_first(
            [
                root / "brainmasks" / f"{self.name}_space-T1w_brainmask.nii.gz",
                root / f"{self.name}_space-T1w_brainmask.nii.gz",
            ]
        )
        if path is None:
            raise DatasetFileNotFoundError(
                f"{root / 'brainmasks' / f'{self.name}_space-T1w_brainmask.nii.gz'}: brain mask not found; it gives "
                f"the affine for voxel_x/y/z (option brainmask names another file). Expected layout: {LAYOUT}"
            )
        return path

    def coords(self) -> np.ndarray:
        with reading(self.mask_path, "brain mask", "a 3-D NIfTI"):
            img = nib.load(self.mask_path)
        ijk = self.voxels.loc[self.rows, ["voxel_x", "voxel_y", "voxel_z"]].to_numpy(dtype=np.int64)
        if (ijk < 0).any() or (ijk >= np.array(img.shape[:3])).any():
            raise format_error(
                self.voxel_path,
                "voxel_x/y/z",
                f"index outside the brain mask grid {img.shape[:3]}",
                f"indices into {self.mask_path.name}",
            )
        return nib.affines.apply_affine(img.affine, ijk).astype(np.float32)

    def roi_sets(self) -> dict[str, list[str]]:
        sets = {}
        if self.rois:
            member = self.voxels.loc[self.rows, self.rois].fillna(0).to_numpy() > 0
            sets["things"] = [self.rois[int(np.argmax(m))] if m.any() else "" for m in member]
        glasser = [c for c in self.voxels.columns if str(c).startswith("glasser-")]
        if glasser:
            member = self.voxels.loc[self.rows, glasser].fillna(0).to_numpy() > 0
            sets["glasser"] = [glasser[int(np.argmax(m))][8:] if m.any() else "" for m in member]
        return sets

    def noise_ceiling(self) -> np.ndarray | None:
        if self.opts["noise_ceiling"] == "repeats":
            return None
        if "nc_testset" not in self.voxels.columns:
            raise format_error(
                self.voxel_path, "nc_testset", "is missing", "the noise ceiling column (or set noise_ceiling: repeats)"
            )
        nc = self.voxels.loc[self.rows, "nc_testset"].to_numpy(dtype=np.float64)
        if np.nanmax(nc, initial=0.0) <= 1.0:
            # the release gives percent (e.g. 11.8, 20.7); values that never exceed 1 must be fractions
            warn(f"{self.voxel_path}: nc_testset never exceeds 1, read as a fraction and converted to percent")
            nc = nc * 100.0
        return nc


def _image_paths(root: Path, opts: dict, subjects: list[Subject]) -> dict[str, Path]:
    """Stimulus file name -> path, for every image shown to the chosen subjects."""
    folder = (
        Path(opts["images_dir"])
        if opts["images_dir"]
        else find_first([root / "images", root / "object_images", root / "stimuli"])
    )
    if folder is None or not folder.is_dir():
        raise DatasetFileNotFoundError(
            f"{root}/images: THINGS image folder not found (option images_dir). Expected layout: {LAYOUT}"
        )
    wanted: dict[str, str] = {}
    for subj in subjects:
        concepts = subj.stimuli["concept"] if "concept" in subj.stimuli else [""] * len(subj.stimuli)
        for stim, concept in zip(subj.stimuli["stimulus"].iloc[subj.trials], np.asarray(concepts)[subj.trials]):
            wanted.setdefault(str(stim), str(concept))
    paths = find_images(folder, {stim: Path(concept) / stim for stim, concept in wanted.items()})
    missing = [s for s in wanted if s not in paths]
    if missing:
        raise DatasetFileNotFoundError(f"{folder}: {len(missing)} stimulus image(s) missing, e.g. {missing[:5]}")
    return paths


def voxel_blocks(subj: Subject) -> Iterator[np.ndarray]:
    """The kept voxels' responses, one array [n_trials, kept voxels of the slice] per slice of table rows (row order).

    Slices holding no kept voxel are skipped; in every slice read, voxel_id must match VoxelMetadata row by row.
    """
    expected_ids = subj.voxels["voxel_id"].to_numpy()
    with ResponseTable(subj.response_path) as table:
        subj.check_table(table)
        slices = list(table.slices())
        for start, stop in progress(slices, f"things_fmri {subj.name}", total=len(slices), unit="slice"):
            sel = subj.rows[(subj.rows >= start) & (subj.rows < stop)]
            if not sel.size:
                continue
            block = table.read(start, stop, ["voxel_id", *subj.columns])
            ids = block[:, 0]
            wrong = np.flatnonzero(ids != expected_ids[start:stop])
            if wrong.size:
                row = start + int(wrong[0])
                raise DatasetFormatError(
                    f"{subj.response_path}: row {row} has voxel_id {ids[wrong[0]]:g} but row {row} of "
                    f"{subj.voxel_path.name} has voxel_id {expected_ids[row]}; expected the same voxels in the "
                    "same order in both files (use the two files of one download)"
                )
            yield block[sel - start, 1:].T


def _write_subject(target, subj: Subject, out: Path, row_of: dict[str, int], split_of: dict[str, int]) -> dict:
    """Stream the subject's table into the store: slices of voxel rows are z-scored and transposed through a
    scratch HDF5 file [trials, voxels] beside the output, then appended in chunks of trials."""
    sessions = subj.stimuli["session"].to_numpy()[subj.trials]
    n_trials, n_vox = len(subj.columns), len(subj.rows)
    scratch = out.with_name(f".{out.name}.{subj.name}.scratch.h5")
    try:
        with h5py.File(scratch, "w") as sf:
            ds = sf.create_dataset(
                "x", (n_trials, n_vox), np.float32, chunks=(min(n_trials, 256), min(max(n_vox, 1), 1024))
            )
            done = 0
            for block in voxel_blocks(subj):
                if subj.opts["zscore"]:
                    block = zscore_rows(block, sessions)
                ds[:, done : done + block.shape[1]] = block
                done += block.shape[1]
            w = target.subject(subj.name, n_vox)
            stims = subj.stimuli["stimulus"].astype(str).to_numpy()[subj.trials]
            for t0 in range(0, n_trials, 256):
                chunk = stims[t0 : t0 + 256]
                w.append(ds[t0 : t0 + 256], [row_of[s] for s in chunk], [split_of[s] for s in chunk])
    finally:
        if scratch.exists():
            os.unlink(scratch)
    return w.finish(
        subj.coords(),
        rois=subj.roi_sets(),
        noise_ceiling=subj.noise_ceiling(),
        attrs={"zscored": bool(subj.opts["zscore"]), "visual_rois": ",".join(subj.rois)},
    )


@dataclass
class Opened:
    """Everything read before any data is written: the subjects (metadata read, tables checked), the images
    found on disk, and the split of each image."""

    opts: dict
    subjects: list[Subject]
    paths: dict[str, Path]  # stimulus file name -> image file
    names: list[str]  # store image order
    split_of: dict[str, int]

    def trial_stimuli(self, subj: Subject) -> np.ndarray:
        """Stimulus file name of each kept trial [n_trials]."""
        return subj.stimuli["stimulus"].astype(str).to_numpy()[subj.trials]


def open_dataset(root: str | Path, options: dict | None) -> Opened:
    """Read THINGS-fMRI's metadata and check its files as :func:`prepare` will, without reading responses."""
    root = Path(root)
    opts = resolve_options(ADAPTER, options, DEFAULTS)
    check_choice(ADAPTER, "noise_ceiling", opts["noise_ceiling"], ["nc_testset", "repeats"])
    table_dir = Path(opts["table_dir"]) if opts["table_dir"] else root / "betas_csv"
    if opts["subjects"] is None:
        numbers = sorted(int(p.name[4:6]) for p in table_dir.glob("sub-[0-9][0-9]_ResponseData.h5"))
        if not numbers:
            raise DatasetFileNotFoundError(f"{table_dir}: no sub-0X_ResponseData.h5. Expected layout: {LAYOUT}")
    else:
        numbers = [parse_subject_number(s, "'01' or 1", ADAPTER) for s in as_list(opts["subjects"])]
    subjects = [Subject(root, n, opts) for n in numbers]

    paths = _image_paths(root, opts, subjects)
    names = sorted(paths)
    test = set()
    for subj in subjects:
        types = subj.stimuli["trial_type"].astype(str).to_numpy()[subj.trials]
        test |= set(subj.stimuli["stimulus"].astype(str).to_numpy()[subj.trials][types == "test"].tolist())
    return Opened(opts, subjects, paths, names, split_images(names, test, opts["val_fraction"], opts["seed"]))


def prepare(root, out, *, image_size: int, options: dict) -> dict:
    """Prepare THINGS-fMRI (table release) under ``root`` into the store ``out``."""
    out = Path(out)
    ds = open_dataset(root, options)
    opts, names = ds.opts, ds.names
    row_of = {s: r for r, s in enumerate(names)}
    report: dict[str, Any] = {"dataset": ADAPTER, "n_images": len(names), "subjects": {}}
    with StoreWriter(out, name=opts["name"], modality="fmri", source=ADAPTER, image_size=image_size) as writer:
        writer.write_images(
            lazy_images([ds.paths[n] for n in names], "things_fmri images"), names, [things_source(n) for n in names]
        )
        target = DirectTarget(writer)
        for subj in ds.subjects:
            report["subjects"][subj.name] = _write_subject(target, subj, out, row_of, ds.split_of)
    return report


def check(root: Path, options: Mapping[str, Any], *, read_data: bool = True) -> list[CheckRow]:
    """One row per subject, opened as :func:`prepare` opens it; nothing written."""
    ds = open_dataset(root, dict(options))
    rows = []
    for subj in ds.subjects:
        stims = ds.trial_stimuli(subj)
        codes = np.array([ds.split_of[s] for s in stims], dtype=np.int64)
        nan = None
        if read_data:  # slices of voxel rows, as prepare reads them; voxel_id order is checked on the way
            nan = sum(int(np.isnan(block).any(axis=0).sum()) for block in voxel_blocks(subj))
        rows.append(check_row(ADAPTER, subj.name, codes, len(set(stims)), len(subj.rows), nan))
    return rows


# Images were shown at 10 deg of visual angle (THINGS-data, Hebart et al. 2023, as Brain-Score's benchmark of it
# states; docs/datasets.md).
VISUAL_ANGLE = 10.0

# The terms of use the data carry (docs/sharing.md gives the source); a model card repeats them.
TERMS = "THINGS-data (Hebart et al. 2023): CC0 (OpenNeuro ds004192, figshare); stimuli: THINGS object images, for academic non-commercial research only (THINGS database, osf.io/jum2f)"

FORMAT = DatasetAdapter(
    name=ADAPTER, defaults=DEFAULTS, prepare=prepare, check=check, visual_angle=VISUAL_ANGLE, terms=TERMS
)
