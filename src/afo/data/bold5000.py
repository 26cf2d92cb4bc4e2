"""BOLD5000 (Chang et al. 2019), release 2.0: 4 subjects, 3T fMRI, GLMsingle single-trial betas.

Files read under ``root`` (anywhere below it; found by name). Sources in brackets: [G] the authors' script that
wrote the betas, tarrlab/BOLD5000-GLMs save_BOLD5000_session_niftis.m; [L] public loaders of the release (e.g. the
Brain-Score BOLD5000 packaging: file names, ROI masks on OpenNeuro ds001499 derivatives/spm)::

    CSI{n}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_ses-NN.nii.gz   4-D betas (X, Y, Z, trials) [L]; 15 sessions, CSI4 9
                                                [G: maxses]; float32 with 2 mm voxels and no orientation
                                                (qform_code = sform_code = 0) [G: make_nii(single(betas), [2 2 2],
                                                [], 16), whose header leaves both codes 0]
    CSI{n}_brainmask.nii.gz                     the subject's brain mask on the betas grid [L]; gives the affine
                                                when the betas carry none (option ``brainmask`` names another file)
    CSI{n}_imgnames.txt                         one image file name per trial, sessions concatenated [L]
    sub-CSI{n}/sub-CSI{n}_mask-{LH,RH}{EarlyVis,LOC,OPA,PPA,RSC}.nii.gz   optional ROI masks [L: ds001499
                                                derivatives/spm]; a few files are named LHLO / RHRRSC
    BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli/{COCO,ImageNet,Scene}/<image file>   [L]

Voxels (option ``voxels``): ``rois`` = the union of the ROI masks (the visual voxels), ``never_nan`` = every
voxel with a finite beta in every session, ``auto`` = ``rois`` when the ROI masks are there, else
``never_nan``. The brain mask is not used to select voxels (it may be misaligned with the betas); voxels that are
never NaN make a safe mask instead. A voxel that is NaN on some trials only keeps those trials as NaN (missing).

Coordinates: voxel indices through the betas' affine when their header has one (qform or sform code > 0);
otherwise (the release, [G]) through the affine of ``CSI{n}_brainmask.nii.gz``, after checking that its grid
shape and voxel size are the betas'; a mismatch, a missing mask, or a mask without orientation too is an error
naming both files. nibabel's fallback for a header without orientation (centred, x flipped) is never used.
The store records which file gave the affine (subject attribute ``affine_source``).

Betas: percent signal change; int16 files are divided by 300 (NSD's convention), float files (the release,
float32 [G]) are used as they are, then z-scored per voxel within each session. Split by image: images shown
more than once (112 x 4 and 1 x 3; 4 repeats [G: numreps]) are the test set, the rest is split train/val; the
noise ceiling comes from those repeats.

[unverified] that the brain mask's affine is the betas' (both come from the same fMRIPrep space; the grid and
voxel size checks guard it). [unverified] whether the ROI masks share the betas' grid: a mask on another grid
is an error that suggests ``voxels: never_nan``. [unverified] some presentation lists prefix repeated images
with ``rep_``: a name not found as is is looked up again without that prefix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from afo.data.adapter import CheckRow, DatasetAdapter, check_row, nan_columns
from afo.data.bigbrain import DirectTarget
from afo.data.files import DatasetFileNotFoundError, DatasetFormatError, format_error, read_lines, reading, require_file
from afo.data.media import index_images, lazy_images
from afo.data.options import as_list, check_choice, parse_subject_number, progress, resolve_options, warn
from afo.data.overlap import bold5000_source
from afo.data.responses import volume_scale, zscore_rows
from afo.data.splits import split_images
from afo.data.store import StoreWriter

ADAPTER = "bold5000"
ROI_NAMES = ("EarlyVis", "LOC", "OPA", "PPA", "RSC")
ROI_ALIASES = {"LO": "LOC", "RRSC": "RSC"}  # inconsistent file names in the release
CHUNK_TRIALS = 64

DEFAULTS: dict[str, Any] = {
    "name": "bold5000",
    "subjects": None,
    "sessions": None,
    "voxels": "auto",
    "brainmask": None,
    "roi_dir": None,
    "stimuli_dir": None,
    "zscore": True,
    "scale": "auto",
    "val_fraction": 0.06,
    "seed": 0,
}

LAYOUT = (
    "<root>/**/CSI{n}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_ses-NN.nii.gz, <root>/**/CSI{n}_imgnames.txt, "
    "<root>/**/CSI{n}_brainmask.nii.gz, <root>/BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli/{COCO,ImageNet,Scene}/, optional ROI masks "
    "<root>/**/sub-CSI{n}/sub-CSI{n}_mask-{LH,RH}<roi>.nii.gz"
)
BETAS_RE = re.compile(r"CSI(\d+)_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_ses-(\d+)\.nii(\.gz)?$")


def find_betas(root: Path) -> dict[int, dict[int, Path]]:
    """{subject: {session: path}} of every GLMsingle betas file below root."""
    found: dict[int, dict[int, Path]] = {}
    for path in sorted(root.rglob("CSI*_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_ses-*.nii*")):
        m = BETAS_RE.search(path.name)
        if m:
            found.setdefault(int(m.group(1)), {})[int(m.group(2))] = path
    return found


def find_roi_masks(folder: Path, subject: int) -> dict[str, Path]:
    """{'LHPPA': path, ...}, names normalised (LHLO -> LHLOC, RHRRSC -> RHRSC)."""
    masks = {}
    for path in sorted(folder.rglob(f"sub-CSI{subject}_mask-*.nii*")):
        m = re.search(r"_mask-(LH|RH)(\w+?)\.nii", path.name)
        if m:
            roi = ROI_ALIASES.get(m.group(2), m.group(2))
            masks[m.group(1) + roi] = path
    return masks


def has_orientation(img: nib.Nifti1Image) -> bool:
    """Whether the NIfTI header carries a real voxel-to-world transform (qform_code or sform_code > 0)."""
    return int(img.header["qform_code"]) > 0 or int(img.header["sform_code"]) > 0


def betas_affine(betas: nib.Nifti1Image, betas_path: Path, mask_path: Path | None) -> tuple[np.ndarray, str]:
    """(affine [4, 4], where it came from) for the voxel indices of a betas file.

    The GLMsingle betas were written by MATLAB's make_nii, which leaves qform_code = sform_code = 0; nibabel
    then invents a centred, x-flipped affine from the voxel size alone. The brain mask of the same subject is on
    the same grid and carries the real transform, so it is used instead, after checking the grid shape and voxel
    size match. Betas with a real transform (a re-saved or re-released copy) keep their own.
    """
    if has_orientation(betas):
        return np.asarray(betas.affine, dtype=np.float64), f"{betas_path.name} (its qform/sform)"
    if mask_path is None:
        raise DatasetFileNotFoundError(
            f"{betas_path}: has no orientation (qform_code = sform_code = 0, as GLMsingle's make_nii writes it) and "
            f"no {betas_path.name.split('_')[0]}_brainmask.nii.gz was found below the root to take the affine "
            "from; put the release's brain mask beside the betas, or name it with option brainmask"
        )
    with reading(mask_path, "BOLD5000 brain mask", "a 3-D NIfTI on the betas grid"):
        mask = nib.load(mask_path)
    grid, mask_grid = tuple(betas.shape[:3]), tuple(mask.shape[:3])
    if grid != mask_grid:
        raise DatasetFormatError(
            f"{mask_path}: grid {mask_grid} differs from the betas grid {grid} of {betas_path}, so its affine cannot "
            "place the betas' voxels; expected the brain mask of the same subject and release (option brainmask)"
        )
    sizes, mask_sizes = np.asarray(betas.header.get_zooms()[:3]), np.asarray(mask.header.get_zooms()[:3])
    if not np.allclose(sizes, mask_sizes, atol=1e-3):
        raise DatasetFormatError(
            f"{mask_path}: voxel size {mask_sizes.tolist()} mm differs from {sizes.tolist()} mm in {betas_path}; "
            "expected the brain mask of the same subject and release (option brainmask)"
        )
    if not has_orientation(mask):
        raise DatasetFormatError(
            f"{mask_path}: has no orientation either (qform_code = sform_code = 0), and neither has {betas_path}; "
            "expected the release's brain mask, which carries the subject's affine (option brainmask)"
        )
    return np.asarray(mask.affine, dtype=np.float64), f"{mask_path.name} (the betas carry no qform/sform)"


class Subject:
    """One BOLD5000 subject: its session files, trial list and voxel selection."""

    def __init__(self, root: Path, number: int, session_paths: dict[int, Path], opts: dict):
        self.number, self.name, self.opts = number, f"CSI{number}", opts
        self.all_sessions = session_paths
        self.sessions = self._pick_sessions()
        self.n_trials = {s: self._n_trials(p) for s, p in session_paths.items()}
        first = session_paths[self.sessions[0]]
        with reading(first, "BOLD5000 betas header", "a 4-D NIfTI (X, Y, Z, trials)"):
            ref = nib.load(first)
        self.shape = tuple(int(x) for x in ref.shape[:3])
        self.affine, self.affine_source = betas_affine(ref, first, self._brainmask_path(root))
        self.image_names = self._trial_names(root)
        self.roi_paths = find_roi_masks(Path(opts["roi_dir"]) if opts["roi_dir"] else root, number)
        self.ijk, self.roi_labels = self._voxels()

    def _brainmask_path(self, root: Path) -> Path | None:
        """CSI{n}_brainmask.nii.gz: option ``brainmask`` ({subject} = the number), else found by name below root."""
        given = self.opts["brainmask"]
        if given:
            return require_file(str(given).replace("{subject}", str(self.number)), "brain mask", LAYOUT)
        found = sorted(root.rglob(f"CSI{self.number}_brainmask.nii*"))
        return found[0] if found else None

    def _pick_sessions(self) -> list[int]:
        wanted = self.opts["sessions"]
        available = sorted(self.all_sessions)
        if wanted is None:
            return available
        sessions = list(range(1, wanted + 1)) if isinstance(wanted, int) else sorted(int(s) for s in wanted)
        missing = [s for s in sessions if s not in self.all_sessions]
        if missing:
            raise DatasetFileNotFoundError(
                f"bold5000 {self.name}: betas of sessions {missing} not found (found {available}). Expected: {LAYOUT}"
            )
        return sessions

    @staticmethod
    def _n_trials(path: Path) -> int:
        with reading(path, "BOLD5000 betas header", "a 4-D NIfTI (X, Y, Z, trials)"):
            img = nib.load(path)
        if img.ndim != 4:
            raise format_error(path, "shape", f"is {img.shape}", "4-D (X, Y, Z, trials)")
        return int(img.shape[3])

    def _trial_names(self, root: Path) -> dict[int, list[str]]:
        """Image file name of every trial, per session (the list covers all sessions, concatenated)."""
        paths = sorted(root.rglob(f"CSI{self.number}_imgnames.txt"))
        if not paths:
            raise DatasetFileNotFoundError(f"{root}: CSI{self.number}_imgnames.txt not found. Expected: {LAYOUT}")
        names = read_lines(paths[0])
        total = sum(self.n_trials.values())
        if len(names) != total:
            raise format_error(
                paths[0],
                "lines",
                f"has {len(names)} image names but the {len(self.n_trials)} session files hold {total} trials",
                "one image name per trial of every session, sessions concatenated in order",
            )
        out, start = {}, 0
        for s in sorted(self.n_trials):
            out[s] = names[start : start + self.n_trials[s]]
            start += self.n_trials[s]
        return out

    def _finite_everywhere(self) -> np.ndarray:
        """Voxels with a finite beta on the first trial of every chosen session (GLMsingle leaves whole
        voxels NaN where a session's brain mask ends, not single trials)."""
        mask = np.ones(self.shape, dtype=bool)
        for s in self.sessions:
            path = self.all_sessions[s]
            with reading(path, "BOLD5000 betas", "a 4-D NIfTI (X, Y, Z, trials)"):
                img = nib.load(path)
                if tuple(img.shape[:3]) != self.shape:
                    raise format_error(path, "shape", f"is {img.shape}", f"{self.shape} like the other sessions")
                first = np.asarray(img.dataobj[..., 0], dtype=np.float64)
            mask &= np.isfinite(first)
        return mask

    def _voxels(self) -> tuple[np.ndarray, list[str] | None]:
        mode = self.opts["voxels"]
        if mode == "auto":
            mode = "rois" if self.roi_paths else "never_nan"
            if mode == "never_nan":
                warn(
                    f"bold5000 {self.name}: no ROI masks (sub-CSI{self.number}_mask-*.nii.gz) found; keeping "
                    "every never-NaN voxel (set roi_dir to the ROI masks to keep only visual voxels)"
                )
        self.voxel_mode = mode
        finite = self._finite_everywhere()
        if mode == "never_nan":
            return np.argwhere(finite), None
        if not self.roi_paths:
            raise DatasetFileNotFoundError(
                f"bold5000 {self.name}: voxels: rois but no sub-CSI{self.number}_mask-*.nii.gz found "
                f"(roi_dir={self.opts['roi_dir']}). Expected: {LAYOUT}"
            )
        labels = np.full(self.shape, "", dtype=object)
        for roi, path in sorted(self.roi_paths.items()):
            with reading(path, "BOLD5000 ROI mask", f"a 3-D NIfTI on the betas grid {self.shape}"):
                data = np.asarray(nib.load(path).dataobj)
            if data.shape[:3] != self.shape:
                raise format_error(
                    path,
                    "shape",
                    f"is {data.shape}",
                    f"{self.shape}, the grid of the betas (use voxels: never_nan if the masks are on another grid)",
                )
            inside = (data.reshape(self.shape) > 0) & (labels == "")
            labels[inside] = roi
        keep = (labels != "") & finite
        ijk = np.argwhere(keep)
        return ijk, [str(x) for x in labels[tuple(ijk.T)]]

    def read_session(self, session: int) -> np.ndarray:
        """Betas [trials, n_voxels] in PSC, streamed in chunks of trials."""
        path = self.all_sessions[session]
        with reading(path, "BOLD5000 betas", "a 4-D NIfTI (X, Y, Z, trials)"):
            img = nib.load(path, keep_file_open=True)  # chunks read forward through one gzip stream
            scale = volume_scale(img.get_data_dtype(), self.opts["scale"], ADAPTER)
            n = self.n_trials[session]
            out = np.empty((n, len(self.ijk)), dtype=np.float32)
            i, j, k = self.ijk.T
            for t0 in range(0, n, CHUNK_TRIALS):
                chunk = np.asarray(img.dataobj[..., t0 : t0 + CHUNK_TRIALS])
                out[t0 : t0 + chunk.shape[3]] = chunk[i, j, k, :].T * scale
        return out


def resolve_image(name: str, index: dict[str, Path]) -> Path | None:
    if name in index:
        return index[name]
    stripped = name[4:] if name.startswith("rep_") else name
    return index.get(stripped) or index.get(Path(stripped).name)


@dataclass
class Opened:
    """Everything read before any data is written: subjects (headers, trial lists, voxel selection), the image
    file of every trial, and the split of each image."""

    opts: dict
    subjects: list[Subject]
    trial_paths: dict[str, list[Path]]  # subject -> image file of each trial of the chosen sessions
    image_paths: list[Path]  # store image order
    split_of: dict[str, int]  # image file name -> split code


def open_dataset(root: str | Path, options: dict | None) -> Opened:
    """Read BOLD5000's headers, trial lists and masks and find its images, as :func:`prepare` will."""
    root = Path(root)
    opts = resolve_options(ADAPTER, options, DEFAULTS)
    check_choice(ADAPTER, "voxels", opts["voxels"], ["auto", "rois", "never_nan"])
    betas = find_betas(root)
    if not betas:
        raise DatasetFileNotFoundError(
            f"{root}: no CSI*_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_ses-NN.nii.gz. Expected layout: {LAYOUT}"
        )
    numbers = (
        sorted(betas)
        if opts["subjects"] is None
        else [parse_subject_number(s, "CSI1 or 1", ADAPTER) for s in as_list(opts["subjects"])]
    )
    missing = [n for n in numbers if n not in betas]
    if missing:
        raise DatasetFileNotFoundError(
            f"{root}: no betas for CSI{missing} (found CSI{sorted(betas)}). Expected layout: {LAYOUT}"
        )
    subjects = [Subject(root, n, betas[n], opts) for n in progress(numbers, "bold5000 subjects")]

    stim_dir = (
        Path(opts["stimuli_dir"])
        if opts["stimuli_dir"]
        else (root / "BOLD5000_Stimuli" / "Scene_Stimuli" / "Presented_Stimuli")
    )
    if not stim_dir.is_dir():
        raise DatasetFileNotFoundError(
            f"{stim_dir}: stimulus folder not found (option stimuli_dir). Expected layout: {LAYOUT}"
        )
    index = index_images(stim_dir)
    trial_paths: dict[str, list[Path]] = {}
    problems = []
    for subj in subjects:
        names = [n for s in subj.sessions for n in subj.image_names[s]]
        paths = [resolve_image(n, index) for n in names]
        problems += [n for n, p in zip(names, paths) if p is None]
        trial_paths[subj.name] = paths
    if problems:
        raise DatasetFileNotFoundError(
            f"{stim_dir}: {len(problems)} image(s) named in CSI*_imgnames.txt are missing, e.g. {problems[:5]}"
        )
    image_paths = sorted({p for ps in trial_paths.values() for p in ps}, key=lambda p: p.name)
    repeated = set()
    for paths in trial_paths.values():
        names, counts = np.unique([p.name for p in paths], return_counts=True)
        repeated |= set(names[counts > 1].tolist())
    split_of = split_images([p.name for p in image_paths], repeated, opts["val_fraction"], opts["seed"])
    return Opened(opts, subjects, trial_paths, image_paths, split_of)


def prepare(root, out, *, image_size: int, options: dict) -> dict:
    """Prepare BOLD5000 under ``root`` into the store ``out``."""
    ds = open_dataset(root, options)
    opts, subjects, trial_paths, image_paths, split_of = (
        ds.opts,
        ds.subjects,
        ds.trial_paths,
        ds.image_paths,
        ds.split_of,
    )
    row_of = {p: r for r, p in enumerate(image_paths)}
    report: dict[str, Any] = {"dataset": ADAPTER, "n_images": len(image_paths), "subjects": {}}
    with StoreWriter(out, name=opts["name"], modality="fmri", source=ADAPTER, image_size=image_size) as writer:
        writer.write_images(
            lazy_images(image_paths, "bold5000 images"),
            [p.name for p in image_paths],
            [bold5000_source(p.name) for p in image_paths],
        )
        target = DirectTarget(writer)
        for subj in subjects:
            w = target.subject(subj.name, len(subj.ijk))
            paths = iter(trial_paths[subj.name])
            for s in progress(subj.sessions, f"bold5000 {subj.name} sessions", unit="session"):
                block = subj.read_session(s)
                if opts["zscore"]:
                    block = zscore_rows(block)
                chunk = [next(paths) for _ in range(len(block))]
                w.append(block, [row_of[p] for p in chunk], [split_of[p.name] for p in chunk])
            coords = nib.affines.apply_affine(subj.affine, subj.ijk)
            rois = {"bold5000": subj.roi_labels} if subj.roi_labels is not None else {}
            attrs = {
                "affine": np.asarray(subj.affine, dtype=np.float64).ravel(),
                "volume_shape": np.asarray(subj.shape, dtype=np.int64),
                "affine_source": subj.affine_source,
                "sessions": np.asarray(subj.sessions),
                "zscored": bool(opts["zscore"]),
                "voxels": subj.voxel_mode,
            }
            result = w.finish(coords, rois=rois, attrs=attrs)
            result["sessions"] = subj.sessions
            result["voxels"] = subj.voxel_mode
            result["affine_source"] = subj.affine_source
            report["subjects"][subj.name] = result
    return report


def check(root: Path, options: Mapping[str, Any], *, read_data: bool = True) -> list[CheckRow]:
    """One row per subject, opened as :func:`prepare` opens it (sessions streamed with ``read_data``); nothing written."""
    ds = open_dataset(root, dict(options))
    rows = []
    for subj in ds.subjects:
        paths = ds.trial_paths[subj.name]
        codes = np.array([ds.split_of[p.name] for p in paths], dtype=np.int64)
        nan = nan_columns((subj.read_session(s) for s in subj.sessions), len(subj.ijk)) if read_data else None
        rows.append(check_row(ADAPTER, subj.name, codes, len({p.name for p in paths}), len(subj.ijk), nan))
    return rows


# The terms of use the data carry (docs/sharing.md gives the source); a model card repeats them.
TERMS = "BOLD5000 (Chang et al. 2019): CC0 (OpenNeuro ds001499, figshare); stimuli: MS COCO (Flickr terms of use), ImageNet (non-commercial research, ImageNet terms of access) and SUN images"

FORMAT = DatasetAdapter(name=ADAPTER, defaults=DEFAULTS, prepare=prepare, check=check, terms=TERMS)
