"""THINGS-fMRI (Hebart et al. 2023): 3 subjects, 3T fMRI, single-trial responses in the table release.

Files read under ``root``::

    betas_csv/sub-0X_ResponseData.h5        pandas HDF (PyTables), key ResponseData: rows = voxels, a ``voxel_id``
                                            column and one column per trial ('0'...'9839', the rows of
                                            StimulusMetadata); fixed format read with h5py, table format via pandas
    betas_csv/sub-0X_StimulusMetadata.csv   trial_type (train/test; catch trials are not in the table),
                                            session, run, stimulus (image file name), concept, ...
    betas_csv/sub-0X_VoxelMetadata.csv      voxel_id, voxel_x/y/z (indices into the brain mask grid),
                                            nc_singletrial, nc_testset (percent), 0/1 ROI columns (V1, V2, ...,
                                            lFFA, ..., IT, glasser-*)
    brainmasks/sub-0X_space-T1w_brainmask.nii.gz   gives the affine that turns voxel indices into mm
    <images_dir>/<concept>/<stimulus>       the THINGS images (default images_dir: <root>/images, then
                                            <root>/object_images); found by file name if not in that layout

Voxels: those in any of ``visual_rois`` (default: the retinotopic and category-selective ROI columns, not
the Glasser parcels); ``visual_rois: null`` keeps every voxel. Responses are z-scored per voxel within each
session (option ``zscore``). Split: the repeated test images (trial_type 'test', 12 repeats) are the test
set; the train images are split train/val by image. Noise ceiling: ``nc_testset`` (percent, for the average
of the test repeats, which is how test scores are computed), or from repeats with ``noise_ceiling: repeats``.
ROI sets: ``things`` (first matching ROI column, in ``visual_rois`` order) and ``glasser`` (Glasser parcel).

Memory: the table is read in blocks of voxel rows (all trials each), z-scored, and transposed through a
scratch HDF5 file beside the output, so neither the whole table nor the whole subject sits in memory.

[unverified] the brain mask path (``brainmasks/sub-0X_space-T1w_brainmask.nii.gz``; option ``brainmask``
overrides it, ``{subject}`` is replaced by 01/02/03) and that voxel_x/y/z index that mask's grid in x, y, z
order; the trial column labels may be strings or integers (both handled).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pandas as pd

from afo.data._common import (
    DatasetFileNotFoundError,
    DatasetFormatError,
    as_list,
    check_choice,
    find_first,
    format_error,
    index_images,
    lazy_images,
    open_h5,
    parse_subject_number,
    progress,
    reading,
    require_file,
    resolve_options,
    split_images,
    warn,
    zscore_rows,
)
from afo.data.bigbrain import DirectTarget
from afo.data.store import StoreWriter

ADAPTER = "things_fmri"
VISUAL_ROIS = [
    "V1", "V2", "V3", "hV4", "VO1", "VO2", "LO1 (prf)", "LO2 (prf)", "TO1", "TO2", "V3b", "V3a",
    "lEBA", "rEBA", "lFFA", "rFFA", "lOFA", "rOFA", "lSTS", "rSTS", "lPPA", "rPPA", "lRSC", "rRSC",
    "lTOS", "rTOS", "lLOC", "rLOC", "IT",
]
ROW_BLOCK = 4096  # voxel rows read at once (all trials each)

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


class ResponseTable:
    """Row-block reader of a pandas HDF frame (rows = voxels): fixed format through h5py, table format through
    pandas ``start``/``stop``. Columns are returned in the order of ``trial_columns``."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open_h5(path, "THINGS-fMRI response table", "a pandas HDF file with key ResponseData")
        keys = [k for k in self._file.keys() if isinstance(self._file[k], h5py.Group)]
        if "ResponseData" in keys:
            self.key = "ResponseData"
        elif len(keys) == 1:
            self.key = keys[0]
        else:
            raise format_error(path, "key", f"ResponseData is missing (groups: {keys})", "key ResponseData")
        g = self._file[self.key]
        kind = g.attrs.get("pandas_type", b"")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        self.fixed = kind == "frame" and "axis0" in g  # 'frame_table' (format="table") goes through pandas
        if self.fixed:
            self._init_fixed(g)
        else:
            self._file.close()
            with reading(path, "the pandas HDF table", "a frame written by DataFrame.to_hdf"):
                with pd.HDFStore(path, mode="r") as store:
                    storer = store.get_storer(self.key)
                    self.n_rows = int(storer.nrows)
                    head = store.select(self.key, start=0, stop=1)
            self.columns = [_label(c) for c in head.columns]

    def _init_fixed(self, g: h5py.Group) -> None:
        self.columns = [_label(c) for c in g["axis0"][:]]
        self.n_rows = int(g["axis1"].shape[0])
        self._where: dict[str, tuple[int, int]] = {}
        for b in range(int(g.attrs["nblocks"])):
            for pos, item in enumerate(g[f"block{b}_items"][:]):
                self._where[_label(item)] = (b, pos)
        self._group = g

    def read(self, start: int, stop: int, columns: list[str]) -> np.ndarray:
        """values [stop - start, len(columns)] (float64) of the given rows."""
        if self.fixed:
            blocks: dict[int, np.ndarray] = {}
            out = np.empty((stop - start, len(columns)), dtype=np.float64)
            by_block: dict[int, tuple[list[int], list[int]]] = {}
            for j, c in enumerate(columns):
                b, pos = self._where[c]
                by_block.setdefault(b, ([], []))
                by_block[b][0].append(j)
                by_block[b][1].append(pos)
            for b, (dst, src) in by_block.items():
                if b not in blocks:
                    blocks[b] = self._group[f"block{b}_values"][start:stop]
                out[:, dst] = blocks[b][:, src]
            return out
        with reading(self.path, "the pandas HDF table", "a frame written by DataFrame.to_hdf"):
            frame = pd.read_hdf(self.path, self.key, start=start, stop=stop)
        frame.columns = [_label(c) for c in frame.columns]
        return frame[columns].to_numpy(dtype=np.float64)

    def close(self) -> None:
        if self.fixed and self._file.id.valid:
            self._file.close()


def _label(value: Any) -> str:
    """Column label as text: b'12', '12' and 12 all become '12'."""
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
        self.stimuli = _read_csv(table_dir / f"{self.name}_StimulusMetadata.csv", "stimulus metadata",
                                 ["trial_type", "session", "stimulus"])
        self.stim_path = table_dir / f"{self.name}_StimulusMetadata.csv"
        self.voxels = _read_csv(table_dir / f"{self.name}_VoxelMetadata.csv", "voxel metadata",
                                ["voxel_id", "voxel_x", "voxel_y", "voxel_z"])
        self.voxel_path = table_dir / f"{self.name}_VoxelMetadata.csv"
        keep_trials = self.stimuli["trial_type"].astype(str) != "catch"  # not in the table; dropped if present
        self.trials = np.flatnonzero(keep_trials.to_numpy())
        self.rois = self._visual_rois()
        self.rows = self._rows()
        self.mask_path = self._brainmask(root)

    def _visual_rois(self) -> list[str]:
        wanted = as_list(self.opts["visual_rois"])
        if not wanted:
            return []
        present = [r for r in wanted if r in self.voxels.columns]
        if not present:
            raise format_error(self.voxel_path, "ROI columns", f"has none of {wanted}",
                               "0/1 ROI columns such as V1, V2, lFFA (or set visual_rois: null)")
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
        path = find_first([root / "brainmasks" / f"{self.name}_space-T1w_brainmask.nii.gz",
                           root / f"{self.name}_space-T1w_brainmask.nii.gz"])
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
            raise format_error(self.voxel_path, "voxel_x/y/z", f"index outside the brain mask grid {img.shape[:3]}",
                               f"indices into {self.mask_path.name}")
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
            raise format_error(self.voxel_path, "nc_testset", "is missing",
                               "the noise ceiling column (or set noise_ceiling: repeats)")
        nc = self.voxels.loc[self.rows, "nc_testset"].to_numpy(dtype=np.float64)
        if np.nanmax(nc, initial=0.0) <= 1.0:
            # the release gives percent (e.g. 11.8, 20.7); values that never exceed 1 must be fractions
            warn(f"{self.voxel_path}: nc_testset never exceeds 1, read as a fraction and converted to percent")
            nc = nc * 100.0
        return nc


def _image_paths(root: Path, opts: dict, subjects: list[Subject]) -> dict[str, Path]:
    """Stimulus file name -> path, for every image shown to the chosen subjects."""
    folder = Path(opts["images_dir"]) if opts["images_dir"] else find_first(
        [root / "images", root / "object_images", root / "stimuli"])
    if folder is None or not folder.is_dir():
        raise DatasetFileNotFoundError(f"{root}/images: THINGS image folder not found (option images_dir). "
                                       f"Expected layout: {LAYOUT}")
    wanted: dict[str, str] = {}
    for subj in subjects:
        concepts = subj.stimuli["concept"] if "concept" in subj.stimuli else [""] * len(subj.stimuli)
        for stim, concept in zip(subj.stimuli["stimulus"].iloc[subj.trials], np.asarray(concepts)[subj.trials]):
            wanted.setdefault(str(stim), str(concept))
    paths, index = {}, None
    for stim, concept in wanted.items():
        direct = folder / concept / stim
        if direct.is_file():
            paths[stim] = direct
            continue
        if index is None:
            index = index_images(folder)
        if Path(stim).name in index:
            paths[stim] = index[Path(stim).name]
    missing = [s for s in wanted if s not in paths]
    if missing:
        raise DatasetFileNotFoundError(f"{folder}: {len(missing)} stimulus image(s) missing, e.g. {missing[:5]}")
    return paths


def _write_subject(target, subj: Subject, out: Path, row_of: dict[str, int], split_of: dict[str, int]) -> dict:
    table = ResponseTable(subj.response_path)
    try:
        columns = [str(int(t)) for t in subj.trials]
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise format_error(subj.response_path, missing[0], "is missing",
                               "one column per row of StimulusMetadata, labelled 0, 1, 2, ...")
        voxel_ids = _voxel_ids(table, subj)
        if table.n_rows != len(subj.voxels) or not np.array_equal(voxel_ids, subj.voxels["voxel_id"].to_numpy()):
            raise DatasetFormatError(
                f"{subj.response_path}: its {table.n_rows} rows / voxel_id column do not match the "
                f"{len(subj.voxels)} rows of {subj.voxel_path.name}; expected the same voxels in the same order"
            )
        sessions = subj.stimuli["session"].to_numpy()[subj.trials]
        n_trials, n_vox = len(columns), len(subj.rows)
        scratch = out.with_name(f".{out.name}.{subj.name}.scratch.h5")
        try:
            with h5py.File(scratch, "w") as sf:
                ds = sf.create_dataset("x", (n_trials, n_vox), np.float32,
                                       chunks=(min(n_trials, 256), min(max(n_vox, 1), 1024)))
                done = 0
                for start in progress(range(0, table.n_rows, ROW_BLOCK), f"things_fmri {subj.name}", unit="block"):
                    stop = min(start + ROW_BLOCK, table.n_rows)
                    sel = subj.rows[(subj.rows >= start) & (subj.rows < stop)]
                    if not sel.size:
                        continue
                    block = table.read(start, stop, columns)[sel - start].T  # [trials, voxels]
                    if subj.opts["zscore"]:
                        block = zscore_rows(block, sessions)
                    ds[:, done : done + sel.size] = block
                    done += sel.size
                w = target.subject(subj.name, n_vox)
                stims = subj.stimuli["stimulus"].astype(str).to_numpy()[subj.trials]
                for t0 in range(0, n_trials, 256):
                    chunk = stims[t0 : t0 + 256]
                    w.append(ds[t0 : t0 + 256], [row_of[s] for s in chunk], [split_of[s] for s in chunk])
        finally:
            if scratch.exists():
                os.unlink(scratch)
    finally:
        table.close()
    result = w.finish(subj.coords(), rois=subj.roi_sets(), noise_ceiling=subj.noise_ceiling(),
                      attrs={"zscored": bool(subj.opts["zscore"]), "visual_rois": ",".join(subj.rois)})
    return result


def _voxel_ids(table: ResponseTable, subj: Subject) -> np.ndarray:
    if "voxel_id" not in table.columns:
        raise format_error(subj.response_path, "voxel_id", "is missing", "a voxel_id column beside the trials")
    ids = np.empty(table.n_rows, dtype=np.int64)
    for start in range(0, table.n_rows, 65536):
        stop = min(start + 65536, table.n_rows)
        ids[start:stop] = table.read(start, stop, ["voxel_id"])[:, 0]
    return ids


def prepare(root, out, *, image_size: int, options: dict) -> dict:
    """Prepare THINGS-fMRI (table release) under ``root`` into the store ``out``."""
    root, out = Path(root), Path(out)
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
    row_of = {s: r for r, s in enumerate(names)}
    test = set()
    for subj in subjects:
        types = subj.stimuli["trial_type"].astype(str).to_numpy()[subj.trials]
        test |= set(subj.stimuli["stimulus"].astype(str).to_numpy()[subj.trials][types == "test"].tolist())
    split_of = split_images(names, test, opts["val_fraction"], opts["seed"])

    report: dict[str, Any] = {"dataset": ADAPTER, "n_images": len(names), "subjects": {}}
    with StoreWriter(out, name=opts["name"], modality="fmri", source=ADAPTER, image_size=image_size) as writer:
        writer.write_images(lazy_images([paths[n] for n in names], "things_fmri images"), names)
        target = DirectTarget(writer)
        for subj in subjects:
            report["subjects"][subj.name] = _write_subject(target, subj, out, row_of, split_of)
    return report
