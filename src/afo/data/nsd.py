"""NSD (Natural Scenes Dataset, Allen et al. 2022): 8 subjects, 7T fMRI, single-trial GLMsingle betas.

Files read under ``root`` (the NSD bucket layout, as ``aws s3 sync s3://natural-scenes-dataset`` leaves it)::

    nsddata/experiments/nsd/nsd_expdesign.mat                     masterordering (1, 30000), subjectim (8, 10000)
    nsddata/experiments/nsd/nsd_stim_info_merged.csv              optional: one row per image, columns nsdId
                                                                  (0-based row of imgBrick) and cocoId; gives each
                                                                  image's COCO id, so images shared with BOLD5000
                                                                  are found by identity (afo.data.overlap)
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5                   imgBrick uint8 (73000, 425, 425, 3)
    nsddata_betas/ppdata/subjXX/<space>/<betas>/betas_sessionNN.nii.gz   int16 (X, Y, Z, 750)
                                              or betas_sessionNN.hdf5    /betas int16 (750, Z, Y, X) in h5py
    nsddata_betas/ppdata/subjXX/<space>/<betas>/ncsnr.nii.gz       noise-ceiling SNR (X, Y, Z)
    nsddata/ppdata/subjXX/<space>/roi/<roi>.nii.gz                 integer ROI labels (X, Y, Z)
    nsddata/freesurfer/subjXX/label/<roi>.mgz.ctab                 "index name" per line
  space = fsaverage (surface) instead:
    nsddata_betas/ppdata/subjXX/fsaverage/<betas>/{lh,rh}.betas_sessionNN.mgh   float32 (163842, 1, 1, 750), PSC
    nsddata_betas/ppdata/subjXX/fsaverage/<betas>/{lh,rh}.ncsnr.mgh
    nsddata/freesurfer/fsaverage/label/{lh,rh}.<roi>.mgz, nsddata/freesurfer/fsaverage/label/<roi>.mgz.ctab
    nsddata/freesurfer/fsaverage/surf/{lh,rh}.<fsaverage_surface>

What is written: per subject, the trials of the chosen sessions (750 per session, in presentation order), the
image of each trial from ``nsd_expdesign.mat`` (all its indices are 1-based: image of trial t =
``subjectim[s, masterordering[t] - 1] - 1``, a 0-based row of imgBrick), the betas of the visual voxels
(``mask_roi`` > 0, default nsdgeneral) in percent signal change (int16 volume betas / 300; float surface betas
as they are) z-scored per voxel within each session (the NSD convention), coordinates in subject-native mm
(NIfTI affine applied to the voxel indices; surface: fsaverage vertex positions, right hemisphere moved right
when the two hemispheres overlap as the sphere and inflated surfaces do), ROI labels by ctab name, and the
noise ceiling from ``ncsnr`` (NC = 100 ncsnr^2 / (ncsnr^2 + mean(1/n)), n = repeats of each test image in the
chosen sessions), else from repeats.

Split by image, shared across subjects: test = the shared1000 images (``subjectim[:, :1000]``) or the shared515
(shared images seen 3 times by all 8 subjects in their full sessions); the other images are split train/val.

Sessions are streamed one at a time (a session's visual voxels x 750 trials is the most held in memory); the
volume betas are read in chunks of trials.

Checked against public NSD loaders: the volume and fsaverage beta file names, /300 for volume betas only,
the ctab format. [unverified] the fsaverage ROI folder (nsddata/freesurfer/fsaverage/label/{lh,rh}.<roi>.mgz)
and that the HDF5 betas carry no affine (coordinates then come from the ROI or ncsnr NIfTI on the same grid);
a missing file is an error that names the path looked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import scipy.io

from afo.data.adapter import CheckRow, DatasetAdapter, check_row, nan_columns
from afo.data.bigbrain import DirectTarget
from afo.data.files import (
    DatasetFileNotFoundError,
    DatasetFormatError,
    format_error,
    h5_dataset,
    open_h5,
    reading,
    require_file,
)
from afo.data.noise_ceiling import ncsnr_to_nc
from afo.data.options import (
    AdapterOptionError,
    as_list,
    check_choice,
    parse_subject_number,
    progress,
    resolve_options,
    warn,
)
from afo.data.overlap import coco_source
from afo.data.responses import volume_scale, zscore_rows
from afo.data.splits import split_images
from afo.data.store import SPLIT_CODE, StoreWriter, SurfaceLayout

ADAPTER = "nsd"
SESSIONS_PER_SUBJECT = (40, 40, 32, 30, 40, 32, 40, 30)
TRIALS_PER_SESSION = 750
N_SHARED = 1000
CHUNK_TRIALS = 50  # trials read at once from a volume beta file (~70 MB of int16 at 1.8 mm)

DEFAULTS: dict[str, Any] = {
    "name": "nsd",
    "subjects": None,
    "sessions": None,
    "space": "func1pt8mm",
    "betas": "betas_fithrf_GLMdenoise_RR",
    "betas_format": "auto",
    "mask_roi": "nsdgeneral",
    "roi_sets": ["nsdgeneral", "streams", "prf-visualrois"],
    "zscore": True,
    "scale": "auto",
    "test_images": "shared1000",
    "noise_ceiling": "auto",
    "fsaverage_surface": "sphere",
    "val_fraction": 0.06,
    "seed": 0,
}

LAYOUT = (
    "<root>/nsddata_betas/ppdata/subjXX/<space>/<betas>/betas_sessionNN.nii.gz (or .hdf5), "
    "<root>/nsddata/ppdata/subjXX/<space>/roi/<roi>.nii.gz, <root>/nsddata/experiments/nsd/nsd_expdesign.mat, "
    "<root>/nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
)


# ----------------------------------------------------------------------------------------------------------------
# experiment design


def expdesign_path(root: Path) -> Path:
    return root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"


def load_expdesign(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(masterordering [30000], subjectim [8, 10000]), both still 1-based as in the file."""
    require_file(path, "NSD experiment design", LAYOUT)
    with reading(path, "the NSD experiment design (MATLAB .mat)", "a .mat file scipy.io.loadmat reads"):
        mat = scipy.io.loadmat(path)
    for key in ("masterordering", "subjectim"):
        if key not in mat:
            raise format_error(path, key, "is missing", "masterordering (1, 30000) and subjectim (8, 10000), 1-based")
    master = np.asarray(mat["masterordering"]).astype(np.int64).ravel()
    subjectim = np.asarray(mat["subjectim"]).astype(np.int64)
    if subjectim.ndim != 2 or subjectim.shape[1] < N_SHARED:
        raise format_error(path, "subjectim", f"has shape {subjectim.shape}", "(8, 10000) 73k ids, 1-based")
    if master.min() < 1 or master.max() > subjectim.shape[1]:
        raise format_error(
            path,
            "masterordering",
            f"has values {master.min()}..{master.max()}",
            f"1-based indices into the {subjectim.shape[1]} columns of subjectim",
        )
    return master, subjectim


def trial_images(master: np.ndarray, subjectim: np.ndarray, subject: int, sessions: list[int]) -> np.ndarray:
    """0-based 73k image id of every trial of the given (1-based) sessions, in presentation order."""
    if subject > subjectim.shape[0]:
        raise DatasetFormatError(f"nsd_expdesign.mat: subjectim has {subjectim.shape[0]} rows, no subject {subject}")
    need = max(sessions) * TRIALS_PER_SESSION
    if need > master.size:
        raise DatasetFormatError(f"nsd_expdesign.mat: masterordering has {master.size} trials, need {need}")
    positions = np.concatenate([np.arange((s - 1) * TRIALS_PER_SESSION, s * TRIALS_PER_SESSION) for s in sessions])
    return subjectim[subject - 1, master[positions] - 1] - 1


def test_image_ids(master: np.ndarray, subjectim: np.ndarray, which: str) -> np.ndarray:
    """0-based 73k ids of the test images: shared1000, or shared515 (seen 3x by all subjects in full sessions)."""
    shared_cols = np.arange(N_SHARED)
    if which == "shared1000":
        return subjectim[0, shared_cols] - 1
    counts = np.zeros((len(SESSIONS_PER_SUBJECT), N_SHARED), dtype=np.int64)
    for s, n_ses in enumerate(SESSIONS_PER_SUBJECT):
        cols = master[: min(n_ses * TRIALS_PER_SESSION, master.size)] - 1
        cols = cols[cols < N_SHARED]
        np.add.at(counts[s], cols, 1)
    keep = (counts >= 3).all(axis=0)
    return subjectim[0, shared_cols[keep]] - 1


# ----------------------------------------------------------------------------------------------------------------
# ROI label tables


def read_ctab(path: Path) -> dict[int, str]:
    """FreeSurfer-style colour table: "index name [r g b a]" per line; '#' comments ignored."""
    names: dict[int, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#"):
            try:
                names[int(parts[0])] = parts[1]
            except ValueError:
                raise format_error(
                    path, "index", f"is not an integer in line {line!r}", "'index name' per line"
                ) from None
    return names


def label_names(values: np.ndarray, ctab: dict[int, str] | None) -> list[str]:
    """ROI label per voxel: the ctab name for values > 0, '' otherwise (0 = outside, -1 = outside cortex)."""
    values = np.asarray(values).astype(np.int64)
    out = []
    for v in values.tolist():
        out.append("" if v <= 0 else (ctab.get(v, str(v)) if ctab else str(v)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# sources: volume (NIfTI / HDF5) and fsaverage surface


class VolumeSource:
    """Betas of one subject on a volume grid (func1pt8mm / func1mm), NIfTI or HDF5."""

    n_trials = TRIALS_PER_SESSION  # trials per beta file (another NSD experiment's source sets its own)

    def __init__(self, root: Path, subject: int, opts: dict):
        self.root, self.subject, self.opts = root, subject, opts
        subj = f"subj{subject:02d}"
        self.name = subj
        self.betas_dir = root / "nsddata_betas" / "ppdata" / subj / opts["space"] / opts["betas"]
        self.roi_dir = root / "nsddata" / "ppdata" / subj / opts["space"] / "roi"
        self.ctab_dir = root / "nsddata" / "freesurfer" / subj / "label"
        self.format = self._pick_format()
        self.shape, self.affine = self._grid()
        self.mask = self._mask()
        self.ijk = np.argwhere(self.mask)  # C order: the voxel order of every array we write
        self.n_voxels = len(self.ijk)

    def session_path(self, session: int) -> Path:
        suffix = ".nii.gz" if self.format == "nifti" else ".hdf5"
        return self.betas_dir / f"betas_session{session:02d}{suffix}"

    def _pick_format(self) -> str:
        fmt = self.opts["betas_format"]
        if fmt != "auto":
            return fmt
        if sorted(self.betas_dir.glob("betas_session*.nii.gz")):
            return "nifti"
        if sorted(self.betas_dir.glob("betas_session*.hdf5")):
            return "hdf5"
        raise DatasetFileNotFoundError(
            f"{self.betas_dir}: no betas_sessionNN.nii.gz or betas_sessionNN.hdf5 for {self.name}. "
            f"Expected layout: {LAYOUT}"
        )

    def available_sessions(self) -> list[int]:
        return [s for s in range(1, SESSIONS_PER_SUBJECT[self.subject - 1] + 1) if self.session_path(s).exists()]

    def _reference_nifti(self) -> Path:
        """A NIfTI on the betas' grid: its shape and affine define voxel positions (HDF5 betas have none)."""
        candidates = []
        if self.format == "nifti":
            candidates += sorted(self.betas_dir.glob("betas_session*.nii.gz"))[:1]
        if self.opts["mask_roi"]:
            candidates.append(self.roi_dir / f"{self.opts['mask_roi']}.nii.gz")
        candidates.append(self.betas_dir / "ncsnr.nii.gz")
        candidates += [self.roi_dir / f"{r}.nii.gz" for r in self.opts["roi_sets"] or []]
        for path in candidates:
            if path.exists():
                return path
        raise DatasetFileNotFoundError(
            f"{self.name}: no NIfTI on the betas grid to take voxel positions from (looked for "
            f"{[str(c) for c in candidates]}). HDF5 betas need the ROI or ncsnr NIfTI beside them. "
            f"Expected layout: {LAYOUT}"
        )

    def _grid(self) -> tuple[tuple[int, int, int], np.ndarray]:
        ref = self._reference_nifti()
        with reading(ref, "a NIfTI header", "a NIfTI-1 image"):
            img = nib.load(ref)
            return tuple(int(x) for x in img.shape[:3]), img.affine

    def _load_volume(self, path: Path, what: str) -> np.ndarray:
        with reading(path, what, f"a 3-D NIfTI on the {self.shape} betas grid"):
            data = np.asarray(nib.load(path).dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.shape != self.shape:
            raise format_error(path, "shape", f"is {data.shape}", f"{self.shape}, the betas grid")
        return data

    def _mask(self) -> np.ndarray:
        roi = self.opts["mask_roi"]
        if not roi:
            warn(f"nsd {self.name}: mask_roi is null, every voxel of the {self.shape} grid is kept")
            return np.ones(self.shape, dtype=bool)
        path = require_file(self.roi_dir / f"{roi}.nii.gz", f"mask ROI {roi!r}", LAYOUT)
        mask = self._load_volume(path, f"ROI {roi}") > 0
        if not mask.any():
            raise format_error(path, "labels", "has no voxel > 0", "the mask ROI to select visual voxels")
        return mask

    def coords(self) -> np.ndarray:
        return nib.affines.apply_affine(self.affine, self.ijk).astype(np.float32)

    def rois(self) -> dict[str, list[str]]:
        out = {}
        for roi in self.opts["roi_sets"] or []:
            path = self.roi_dir / f"{roi}.nii.gz"
            if not path.exists():
                warn(f"nsd {self.name}: ROI file {path} not found; ROI set {roi!r} left out")
                continue
            values = self._load_volume(path, f"ROI {roi}")[tuple(self.ijk.T)]
            ctab_path = self.ctab_dir / f"{roi}.mgz.ctab"
            ctab = read_ctab(ctab_path) if ctab_path.exists() else None
            if ctab is None:
                warn(f"nsd {self.name}: {ctab_path} not found; ROI {roi!r} labels are the integer values")
            out[roi] = label_names(values, ctab)
        return out

    def ncsnr(self) -> np.ndarray | None:
        path = self.betas_dir / "ncsnr.nii.gz"
        if not path.exists():
            return None
        return self._load_volume(path, "ncsnr").astype(np.float64)[tuple(self.ijk.T)]

    def read_session(self, session: int) -> tuple[np.ndarray, np.dtype]:
        """(betas [750, n_voxels] as stored, on-disk dtype), read in chunks of trials."""
        path = require_file(self.session_path(session), f"betas of session {session}", LAYOUT)
        if self.format == "nifti":
            return self._read_nifti(path)
        return self._read_hdf5(path)

    def _check_trials(self, path: Path, n: int) -> None:
        if n != self.n_trials:
            raise format_error(path, "trials", f"has {n} trials", f"{self.n_trials} trials per session")

    def _read_nifti(self, path: Path) -> tuple[np.ndarray, np.dtype]:
        expected = f"a 4-D NIfTI (X, Y, Z, {self.n_trials}) on the {self.shape} grid"
        with reading(path, "NSD betas", expected):
            img = nib.load(path, keep_file_open=True)  # chunks read forward through one gzip stream
            if img.ndim != 4 or tuple(img.shape[:3]) != self.shape:
                raise format_error(path, "shape", f"is {img.shape}", expected)
            self._check_trials(path, img.shape[3])
            dtype = img.get_data_dtype()
            out = np.empty((self.n_trials, self.n_voxels), dtype=np.float32)
            i, j, k = self.ijk.T
            # the trial axis is the slowest in the file: each chunk is one contiguous read
            for t0 in range(0, self.n_trials, CHUNK_TRIALS):
                chunk = np.asarray(img.dataobj[..., t0 : t0 + CHUNK_TRIALS])
                out[t0 : t0 + chunk.shape[3]] = chunk[i, j, k, :].T
        return out, dtype

    def _read_hdf5(self, path: Path) -> tuple[np.ndarray, np.dtype]:
        expected = f"/betas with shape (750, Z, Y, X) = (750, {self.shape[2]}, {self.shape[1]}, {self.shape[0]})"
        with open_h5(path, "NSD betas (HDF5)", expected) as f, reading(path, "NSD betas", expected):
            ds = h5_dataset(f, "betas", expected)
            # h5py shows NSD's HDF5 betas with the axes reversed: (trials, Z, Y, X)
            if ds.ndim != 4 or tuple(ds.shape[1:]) != self.shape[::-1]:
                raise format_error(path, "betas", f"has shape {ds.shape}", expected)
            self._check_trials(path, ds.shape[0])
            out = np.empty((self.n_trials, self.n_voxels), dtype=np.float32)
            i, j, k = self.ijk.T
            for t0 in range(0, self.n_trials, CHUNK_TRIALS):
                chunk = ds[t0 : t0 + CHUNK_TRIALS]
                out[t0 : t0 + len(chunk)] = chunk[:, k, j, i]
            return out, ds.dtype


class SurfaceSource:
    """Betas of one subject on fsaverage (both hemispheres, left then right)."""

    n_trials = TRIALS_PER_SESSION  # trials per beta file (another NSD experiment's source sets its own)

    HEMIS = ("lh", "rh")

    def __init__(self, root: Path, subject: int, opts: dict):
        self.root, self.subject, self.opts = root, subject, opts
        self.name = f"subj{subject:02d}"
        self.betas_dir = root / "nsddata_betas" / "ppdata" / self.name / "fsaverage" / opts["betas"]
        self.label_dir = root / "nsddata" / "freesurfer" / "fsaverage" / "label"
        self.surf_dir = root / "nsddata" / "freesurfer" / "fsaverage" / "surf"
        self.format = "mgh"
        self.n_vertices = self._n_vertices()
        self.masks = {h: self._mask(h) for h in self.HEMIS}
        self.n_voxels = int(sum(m.sum() for m in self.masks.values()))

    def session_path(self, session: int, hemi: str = "lh") -> Path:
        return self.betas_dir / f"{hemi}.betas_session{session:02d}.mgh"

    def available_sessions(self) -> list[int]:
        n = SESSIONS_PER_SUBJECT[self.subject - 1]
        return [s for s in range(1, n + 1) if all(self.session_path(s, h).exists() for h in self.HEMIS)]

    def _n_vertices(self) -> dict[str, int]:
        sessions = self.available_sessions()
        if not sessions:
            raise DatasetFileNotFoundError(
                f"{self.betas_dir}: no {{lh,rh}}.betas_sessionNN.mgh for {self.name}. Expected layout: {LAYOUT}"
            )
        out = {}
        for h in self.HEMIS:
            path = self.session_path(sessions[0], h)
            with reading(path, "fsaverage betas (MGH)", "(163842, 1, 1, 750) float32"):
                out[h] = int(nib.load(path).shape[0])
        return out

    def _load_map(self, path: Path, hemi: str, what: str) -> np.ndarray:
        with reading(path, what, f"an MGH/MGZ map with {self.n_vertices[hemi]} vertices"):
            data = np.asarray(nib.load(path).dataobj).reshape(-1)
        if data.size != self.n_vertices[hemi]:
            raise format_error(path, "vertices", f"has {data.size}", f"{self.n_vertices[hemi]} (fsaverage)")
        return data

    def _mask(self, hemi: str) -> np.ndarray:
        roi = self.opts["mask_roi"]
        if not roi:
            return np.ones(self.n_vertices[hemi], dtype=bool)
        path = require_file(self.label_dir / f"{hemi}.{roi}.mgz", f"fsaverage mask ROI {roi!r}", LAYOUT)
        return self._load_map(path, hemi, f"ROI {roi}") > 0

    def coords(self) -> np.ndarray:
        surface = self.opts["fsaverage_surface"]
        parts = []
        for h in self.HEMIS:
            path = require_file(self.surf_dir / f"{h}.{surface}", f"fsaverage {surface} surface", LAYOUT)
            with reading(path, "a FreeSurfer surface", "a FreeSurfer geometry file"):
                xyz, _ = nib.freesurfer.read_geometry(str(path))
            if len(xyz) != self.n_vertices[h]:
                raise format_error(path, "vertices", f"has {len(xyz)}", f"{self.n_vertices[h]}")
            parts.append(xyz[self.masks[h]].astype(np.float64))
        left, right = parts
        # sphere / inflated hemispheres sit on top of each other: move the right one past the left one
        if len(left) and len(right) and right[:, 0].min() < left[:, 0].max():
            width = left[:, 0].max() - left[:, 0].min()
            right = right + np.array([left[:, 0].max() - right[:, 0].min() + 0.5 * width, 0.0, 0.0])
        return np.concatenate([left, right]).astype(np.float32)

    def layout(self) -> SurfaceLayout:
        """Hemisphere and fsaverage vertex of each stored voxel (left then right), for MGH maps on fsaverage."""
        vertices = [np.flatnonzero(self.masks[h]) for h in self.HEMIS]
        index = np.full((sum(v.size for v in vertices), 3), -1, dtype=np.int64)
        index[:, 0] = np.concatenate(vertices)
        structure = np.concatenate([np.full(v.size, h, dtype=object) for h, v in zip(self.HEMIS, vertices)])
        return SurfaceLayout("fsaverage", structure, index, dict(self.n_vertices))

    def rois(self) -> dict[str, list[str]]:
        out = {}
        for roi in self.opts["roi_sets"] or []:
            paths = [self.label_dir / f"{h}.{roi}.mgz" for h in self.HEMIS]
            if not all(p.exists() for p in paths):
                warn(f"nsd {self.name}: {paths} not found; ROI set {roi!r} left out")
                continue
            ctab_path = self.label_dir / f"{roi}.mgz.ctab"
            ctab = read_ctab(ctab_path) if ctab_path.exists() else None
            values = np.concatenate(
                [self._load_map(p, h, f"ROI {roi}")[self.masks[h]] for p, h in zip(paths, self.HEMIS)]
            )
            out[roi] = label_names(values, ctab)
        return out

    def ncsnr(self) -> np.ndarray | None:
        paths = [self.betas_dir / f"{h}.ncsnr.mgh" for h in self.HEMIS]
        if not all(p.exists() for p in paths):
            return None
        return np.concatenate([self._load_map(p, h, "ncsnr")[self.masks[h]] for p, h in zip(paths, self.HEMIS)])

    def read_session(self, session: int) -> tuple[np.ndarray, np.dtype]:
        parts, dtype = [], np.dtype(np.float32)
        for h in self.HEMIS:
            path = require_file(self.session_path(session, h), f"fsaverage betas of session {session}", LAYOUT)
            expected = f"({self.n_vertices[h]}, 1, 1, {self.n_trials})"
            with reading(path, "fsaverage betas (MGH)", expected):
                img = nib.load(path)
                if img.shape[0] != self.n_vertices[h] or img.shape[-1] != self.n_trials:
                    raise format_error(path, "shape", f"is {img.shape}", expected)
                dtype = img.get_data_dtype()
                idx = np.flatnonzero(self.masks[h])
                block = np.empty((self.n_trials, idx.size), dtype=np.float32)
                for t0 in range(0, self.n_trials, CHUNK_TRIALS):
                    chunk = np.asarray(img.dataobj[..., t0 : t0 + CHUNK_TRIALS]).reshape(self.n_vertices[h], -1)
                    block[t0 : t0 + chunk.shape[1]] = chunk[idx].T
            parts.append(block)
        return np.concatenate(parts, axis=1), dtype


# ----------------------------------------------------------------------------------------------------------------
# prepare


def _subjects(root: Path, opts: dict) -> list[int]:
    if opts["subjects"] is not None:
        subjects = [parse_subject_number(s, "subj01 or 1", ADAPTER) for s in as_list(opts["subjects"])]
    else:
        ppdata = root / "nsddata_betas" / "ppdata"
        subjects = sorted(
            int(p.name[4:]) for p in ppdata.glob("subj[0-9][0-9]") if (p / opts["space"] / opts["betas"]).is_dir()
        )
        if not subjects:
            raise DatasetFileNotFoundError(
                f"{ppdata}: no subjXX/{opts['space']}/{opts['betas']} folder. Expected layout: {LAYOUT}"
            )
    bad = [s for s in subjects if not 1 <= s <= len(SESSIONS_PER_SUBJECT)]
    if bad:
        raise AdapterOptionError(f"{ADAPTER}: subjects {bad} do not exist; NSD has subjects 1-8")
    return subjects


def _sessions(source, opts: dict) -> list[int]:
    available = source.available_sessions()
    wanted = opts["sessions"]
    if wanted is None:
        sessions = available
    elif isinstance(wanted, int):
        sessions = list(range(1, wanted + 1))
    else:
        sessions = sorted(int(s) for s in wanted)
    missing = [s for s in sessions if s not in available]
    if missing or not sessions:
        raise DatasetFileNotFoundError(
            f"nsd {source.name}: betas of sessions {missing or sessions} not found in {source.betas_dir} "
            f"(found sessions {available}). Expected layout: {LAYOUT}"
        )
    return sessions


STIMULI_EXPECTED = "dataset imgBrick uint8 (73000, 425, 425, 3)"


def stimuli_path(root: Path) -> Path:
    return root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"


def _brick(f: h5py.File, path: Path, ids: np.ndarray) -> h5py.Dataset:
    """imgBrick of the open stimuli file, checked: uint8 [n, H, W, 3] with a row for every 0-based id in ``ids``."""
    brick = h5_dataset(f, "imgBrick", STIMULI_EXPECTED)
    if brick.ndim != 4 or brick.shape[3] != 3 or brick.dtype != np.uint8:
        raise format_error(path, "imgBrick", f"has shape {brick.shape} and dtype {brick.dtype}", STIMULI_EXPECTED)
    if ids.size and ids.max() >= brick.shape[0]:
        raise format_error(
            path, "imgBrick", f"has {brick.shape[0]} images, the design needs id {ids.max()}", STIMULI_EXPECTED
        )
    return brick


def _images(root: Path, ids: np.ndarray) -> Iterator[np.ndarray]:
    """Rows of imgBrick for the sorted 0-based 73k ids, read in chunks (bounded memory)."""
    path = stimuli_path(root)
    with open_h5(path, "NSD stimuli", STIMULI_EXPECTED) as f:
        brick = _brick(f, path, ids)
        for start in progress(range(0, ids.size, 64), "nsd images", unit="chunk"):
            yield from brick[ids[start : start + 64]]


def stim_info_path(root: Path) -> Path:
    return root / "nsddata" / "experiments" / "nsd" / "nsd_stim_info_merged.csv"


def coco_sources(root: Path, image_ids: np.ndarray) -> list[str] | None:
    """``coco:<cocoId>`` of each 0-based NSD image id from nsd_stim_info_merged.csv; None (with a warning) when
    the file is not there, so shared images are then found by their pixels only."""
    path = stim_info_path(root)
    if not path.is_file():
        warn(
            f"{path} not found: NSD images are matched with other datasets' (BOLD5000's COCO images) by their "
            "pixels only, which misses NSD's square crops; download it to match them by COCO id"
        )
        return None
    return coco_sources_at(path, image_ids)


def coco_sources_at(path: Path, image_ids: np.ndarray) -> list[str]:
    """``coco:<cocoId>`` of each 0-based NSD image id from the nsd_stim_info_merged.csv at ``path``."""
    import pandas as pd

    expected = "a CSV with columns nsdId (0-based image) and cocoId"
    with reading(path, "NSD stimulus information", expected):
        table = pd.read_csv(path, usecols=lambda c: c in ("nsdId", "cocoId"))
    if not {"nsdId", "cocoId"} <= set(table.columns):
        raise format_error(path, "nsdId/cocoId", "are missing", expected)
    coco = dict(zip(table["nsdId"].astype(int), table["cocoId"].astype(int)))
    missing = [int(i) for i in image_ids if int(i) not in coco]
    if missing:
        raise format_error(
            path,
            "nsdId",
            f"lacks {len(missing)} image(s) of the design, e.g. {missing[:3]}",
            "a row for every one of the 73000 images",
        )
    return [coco_source(coco[int(i)]) for i in image_ids]


@dataclass
class Opened:
    """Everything read before any betas: the subjects' sources (grids, masks), their sessions, the image of
    each trial, the images in store order and the split of each image."""

    root: Path
    opts: dict
    sources: list[VolumeSource | SurfaceSource]
    sessions: dict[str, list[int]]  # subject -> sessions read
    trial_ids: dict[str, np.ndarray]  # subject -> 0-based 73k image id of each trial [n_trials]
    image_ids: np.ndarray  # sorted distinct ids: the store's image order
    split_of: dict[int, int]  # image id -> split code


def open_dataset(root: str | Path, options: Mapping[str, Any] | None) -> Opened:
    """Read NSD's design and check its files as :func:`prepare` will, without reading betas."""
    root = Path(root)
    opts = resolve_options(ADAPTER, options, DEFAULTS)
    check_choice(ADAPTER, "space", opts["space"], ["func1pt8mm", "func1mm", "fsaverage"])
    check_choice(ADAPTER, "betas_format", opts["betas_format"], ["auto", "nifti", "hdf5"])
    check_choice(ADAPTER, "test_images", opts["test_images"], ["shared1000", "shared515"])
    check_choice(ADAPTER, "noise_ceiling", opts["noise_ceiling"], ["auto", "ncsnr", "repeats"])
    opts["roi_sets"] = as_list(opts["roi_sets"]) or []

    master, subjectim = load_expdesign(expdesign_path(root))
    make = SurfaceSource if opts["space"] == "fsaverage" else VolumeSource
    sources, sessions, trial_ids = [], {}, {}
    for subject in _subjects(root, opts):
        source = make(root, subject, opts)
        sources.append(source)
        sessions[source.name] = _sessions(source, opts)
        trial_ids[source.name] = trial_images(master, subjectim, subject, sessions[source.name])

    image_ids = np.unique(np.concatenate(list(trial_ids.values())))
    test_ids = test_image_ids(master, subjectim, opts["test_images"])
    split_of = split_images(image_ids.tolist(), test_ids.tolist(), opts["val_fraction"], opts["seed"])
    return Opened(root, opts, sources, sessions, trial_ids, image_ids, split_of)


def prepare(root, out, *, image_size: int, options: dict) -> dict:
    """Prepare NSD under ``root`` into the store ``out``; returns a report per subject."""
    ds = open_dataset(root, options)
    root, opts, image_ids = ds.root, ds.opts, ds.image_ids
    row_of = {int(i): r for r, i in enumerate(image_ids)}
    report: dict[str, Any] = {"dataset": ADAPTER, "n_images": int(image_ids.size), "subjects": {}}
    with StoreWriter(out, name=opts["name"], modality="fmri", source=ADAPTER, image_size=image_size) as writer:
        writer.write_images(
            _images(root, image_ids), [f"nsd{int(i):05d}" for i in image_ids], coco_sources(root, image_ids)
        )
        target = DirectTarget(writer)
        for source in ds.sources:
            report["subjects"][source.name] = _write_subject(
                target, source, ds.sessions[source.name], ds.trial_ids[source.name], row_of, ds.split_of, opts
            )
    return report


def _write_subject(target, source, sessions, ids, row_of, split_of, opts) -> dict:
    w = target.subject(source.name, source.n_voxels)
    for n, session in enumerate(progress(sessions, f"nsd {source.name} sessions", unit="session")):
        betas, dtype = source.read_session(session)
        betas *= volume_scale(dtype, opts["scale"], ADAPTER)
        if opts["zscore"]:
            betas = zscore_rows(betas)
        rows = ids[n * TRIALS_PER_SESSION : (n + 1) * TRIALS_PER_SESSION]
        w.append(betas, [row_of[int(i)] for i in rows], [split_of[int(i)] for i in rows])
    nc = None
    ncsnr = _ncsnr(source, opts)
    if ncsnr is not None:
        test = [i for i in ids.tolist() if split_of[i] == SPLIT_CODE["test"]]
        _, counts = np.unique(test, return_counts=True) if test else (None, np.array([1]))
        nc = ncsnr_to_nc(ncsnr, counts)
    result = w.finish(
        source.coords(),
        rois=source.rois(),
        noise_ceiling=nc,
        attrs={
            "sessions": np.asarray(sessions),
            "space": opts["space"],
            "betas_format": source.format,
            "zscored": bool(opts["zscore"]),
            "mask_roi": str(opts["mask_roi"] or ""),
            **_volume_attrs(source),
        },
        layout=source.layout() if isinstance(source, SurfaceSource) else None,
    )
    result["sessions"] = list(sessions)
    return result


def _ncsnr(source: VolumeSource | SurfaceSource, opts: dict) -> np.ndarray | None:
    """The subject's ncsnr per kept voxel, None where the noise ceiling comes from repeats (or, with ``auto``,
    where there is no ncsnr file)."""
    if opts["noise_ceiling"] == "repeats":
        return None
    ncsnr = source.ncsnr()
    if ncsnr is None and opts["noise_ceiling"] == "ncsnr":
        raise DatasetFileNotFoundError(
            f"nsd {source.name}: ncsnr not found in {source.betas_dir}; "
            "set noise_ceiling: repeats to compute it from repeated images"
        )
    return ncsnr


def _volume_attrs(source) -> dict:
    """The voxel grid of volume subjects (affine, shape), so NIfTI brain maps can be written in their space."""
    affine, shape = getattr(source, "affine", None), getattr(source, "shape", None)
    if affine is None or shape is None:
        return {}
    return {
        "affine": np.asarray(affine, dtype=np.float64).ravel(),
        "volume_shape": np.asarray(shape[:3], dtype=np.int64),
    }


def check(root: Path, options: Mapping[str, Any], *, read_data: bool = True) -> list[CheckRow]:
    """One row per subject, opened as :func:`prepare` opens it (the stimuli file's header, the COCO table, each
    subject's ROI and ncsnr files; sessions streamed with ``read_data``); nothing written."""
    ds = open_dataset(root, options)
    with open_h5(stimuli_path(ds.root), "NSD stimuli", STIMULI_EXPECTED) as f:
        _brick(f, stimuli_path(ds.root), ds.image_ids)
    coco_sources(ds.root, ds.image_ids)
    rows = []
    for source in ds.sources:
        ids = ds.trial_ids[source.name]
        codes = np.array([ds.split_of[int(i)] for i in ids], dtype=np.int64)
        source.rois()
        _ncsnr(source, ds.opts)
        nan = None
        if read_data:
            sessions = ds.sessions[source.name]
            nan = nan_columns((source.read_session(s)[0] for s in sessions), source.n_voxels)
        rows.append(check_row(ADAPTER, source.name, codes, len(np.unique(ids)), source.n_voxels, nan))
    return rows


# The images filled an 8.4 deg square at fixation (Allen et al. 2022; docs/datasets.md), as did the pRF stimulus.
VISUAL_ANGLE = 8.4

# The terms of use the data carry (docs/sharing.md gives the source); a model card repeats them.
TERMS = "Natural Scenes Dataset Terms and Conditions: access after agreeing to the NSD Data Access Agreement (naturalscenesdataset.org); cite Allen et al. 2022; stimuli: MS COCO images (Flickr terms of use; COCO annotations CC BY 4.0)"

FORMAT = DatasetAdapter(
    name=ADAPTER, defaults=DEFAULTS, prepare=prepare, check=check, visual_angle=VISUAL_ANGLE, terms=TERMS
)
