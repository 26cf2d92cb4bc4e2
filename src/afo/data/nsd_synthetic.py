"""NSD-synthetic (Gifford et al.; the NSD data manual): one extra 7T session of the 8 NSD subjects, 284 images
out of NSD's distribution, read as a test-only holdout of the NSD subjects on NSD's own voxels.

Files read under ``root`` (the NSD bucket layout, beside NSD's own files)::

    nsddata/experiments/nsdsynthetic/nsdsynthetic_expdesign.mat     masterordering (744 trials), 1-based image
                                                                    indices 1..284
    nsddata_stimuli/stimuli/nsdsynthetic/nsdsynthetic_stimuli.hdf5  imgBrick uint8 [220, H, W, 3]: images 1..220,
                                                                    the same for every subject
    nsddata_stimuli/stimuli/nsdsynthetic/nsdsynthetic_colorstimuli_subjNN.hdf5   imgBrick uint8 [64, H, W, 3]:
                                                                    images 221..284, the subject's own
    nsddata_betas/ppdata/subjXX/<space>/<betas>/betas_nsdsynthetic.nii.gz        int16 (X, Y, Z, 744)
  space = fsaverage:
    nsddata_betas/ppdata/subjXX/fsaverage/<betas>/{lh,rh}.betas_nsdsynthetic.mgh  float32 (163842, 1, 1, 744)
  and NSD's own ROI files, fsaverage labels and surfaces, exactly as :mod:`afo.data.nsd` reads them.

The voxels are chosen by :mod:`afo.data.nsd`'s own sources (the same ``space`` and ``mask_roi``), so stored
voxel i of subject ``subjNN`` is voxel i of the NSD store's ``subjNN``: the model trained on NSD predicts this
store with those subjects' heads (``heads_of`` names the NSD dataset of the config). Every trial is a test
trial (in presentation order; image of trial t = ``masterordering[t] - 1``, 0-based); the responses are scaled
and z-scored within the session as NSD's; the noise ceiling comes from the session's repeats (images shown 2,
4, 8 or 10 times).

Images: the 220 shared ones are stored once, the 64 colour images once per subject (they differ between
subjects). Public loaders (the dataset authors' evaluation code) take the square root of the intensities
(``sqrt(x / 255) * 255``) of both files and crop the centre square before feeding a network; why is not
stated there: ``intensity`` and ``crop`` choose (docs/datasets.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from afo.data import nsd
from afo.data.adapter import CheckRow, DatasetAdapter, check_row, nan_columns
from afo.data.files import DatasetFileNotFoundError, format_error, open_h5, reading, require_file
from afo.data.noise_ceiling import noise_ceiling_from_repeats
from afo.data.options import as_list, check_choice, progress, resolve_options
from afo.data.responses import volume_scale, zscore_rows
from afo.data.store import SPLIT_CODE, StoreWriter

ADAPTER = "nsd_synthetic"
N_TRIALS = 744  # 8 runs x 93 stimulus trials (NSD data manual, "Functional data (nsdsynthetic)")
N_SUBJECTS = 8

DEFAULTS: dict[str, Any] = {
    "name": "nsd_synthetic",
    "heads_of": "nsd",
    "subjects": None,
    "space": "func1pt8mm",
    "betas": "nsdsyntheticbetas_fithrf_GLMdenoise_RR",
    "mask_roi": "nsdgeneral",
    "roi_sets": ["nsdgeneral", "streams", "prf-visualrois"],
    "zscore": True,
    "scale": "auto",
    "fsaverage_surface": "sphere",
    "intensity": "sqrt",
    "crop": "center",
    "val_fraction": 0.0,  # unused: every trial is a test trial
    "seed": 0,  # unused: nothing is drawn
}

LAYOUT = (
    "<root>/nsddata/experiments/nsdsynthetic/nsdsynthetic_expdesign.mat, "
    "<root>/nsddata_stimuli/stimuli/nsdsynthetic/nsdsynthetic_stimuli.hdf5 and nsdsynthetic_colorstimuli_subjNN.hdf5, "
    "<root>/nsddata_betas/ppdata/subjXX/<space>/<betas>/betas_nsdsynthetic.nii.gz (fsaverage: "
    "{lh,rh}.betas_nsdsynthetic.mgh), and NSD's ROI files as for format nsd"
)
STIMULI_EXPECTED = "dataset imgBrick uint8 (n, H, W, 3)"


def expdesign_path(root: Path) -> Path:
    return root / "nsddata" / "experiments" / "nsdsynthetic" / "nsdsynthetic_expdesign.mat"


def stimuli_dir(root: Path) -> Path:
    return root / "nsddata_stimuli" / "stimuli" / "nsdsynthetic"


def shared_stimuli_path(root: Path) -> Path:
    return stimuli_dir(root) / "nsdsynthetic_stimuli.hdf5"


def color_stimuli_path(root: Path, subject: str) -> Path:
    return stimuli_dir(root) / f"nsdsynthetic_colorstimuli_{subject}.hdf5"


def load_masterordering(path: Path) -> np.ndarray:
    """masterordering [744] as 0-based image indices (the file's are 1-based)."""
    require_file(path, "NSD-synthetic experiment design", LAYOUT)
    with reading(path, "the NSD-synthetic experiment design (MATLAB .mat)", "a .mat file scipy.io.loadmat reads"):
        mat = scipy.io.loadmat(path)
    if "masterordering" not in mat:
        raise format_error(path, "masterordering", "is missing", f"({N_TRIALS},) 1-based image indices")
    master = np.asarray(mat["masterordering"]).astype(np.int64).ravel()
    if master.size != N_TRIALS or master.min() < 1:
        raise format_error(
            path,
            "masterordering",
            f"has {master.size} values in {master.min()}..{master.max()}",
            f"{N_TRIALS} 1-based image indices, one per stimulus trial",
        )
    return master - 1


# ----------------------------------------------------------------------------------------------------------------
# sources: NSD's, reading the one synthetic session


class VolumeSource(nsd.VolumeSource):
    """NSD's volume source (grid, mask, ROIs, coordinates as for NSD) reading ``betas_nsdsynthetic.nii.gz``."""

    n_trials = N_TRIALS

    def _pick_format(self) -> str:
        return "nifti"  # the HDF5 .mat copy public loaders mention is not read

    def session_path(self, session: int = 1) -> Path:
        return self.betas_dir / "betas_nsdsynthetic.nii.gz"

    def available_sessions(self) -> list[int]:
        return [1] if self.session_path().exists() else []


class SurfaceSource(nsd.SurfaceSource):
    """NSD's fsaverage source reading ``{lh,rh}.betas_nsdsynthetic.mgh``."""

    n_trials = N_TRIALS

    def session_path(self, session: int = 1, hemi: str = "lh") -> Path:
        return self.betas_dir / f"{hemi}.betas_nsdsynthetic.mgh"

    def available_sessions(self) -> list[int]:
        return [1] if all(self.session_path(1, h).exists() for h in self.HEMIS) else []


# ----------------------------------------------------------------------------------------------------------------
# images


def _brick_shape(path: Path, what: str) -> tuple[int, ...]:
    with open_h5(path, what, STIMULI_EXPECTED) as f:
        if "imgBrick" not in f:
            raise format_error(path, "imgBrick", "is missing", STIMULI_EXPECTED)
        brick = f["imgBrick"]
        if brick.ndim != 4 or brick.shape[3] != 3 or brick.dtype != np.uint8:
            raise format_error(path, "imgBrick", f"has shape {brick.shape} and dtype {brick.dtype}", STIMULI_EXPECTED)
        return tuple(brick.shape)


def transform(image: np.ndarray, intensity: str, crop: str) -> np.ndarray:
    """One stimulus as the model sees it: intensities as stored (``raw``) or their square root (``sqrt``, as the
    dataset authors' code reads them), then the centre square (``center``) or the whole frame (``none``: the
    store squashes it)."""
    if intensity == "sqrt":
        image = (np.sqrt(image.astype(np.float64) / 255.0) * 255.0).astype(np.uint8)
    if crop == "center":
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top : top + side, left : left + side]
    return np.ascontiguousarray(image)


@dataclass
class Opened:
    """Everything read before any betas: the sources, the image of each trial and the images in store order."""

    root: Path
    opts: dict
    sources: list[VolumeSource | SurfaceSource]
    n_shared: int  # rows of the shared stimuli file: image indices below it are shared, the rest colour images
    trial_rows: dict[str, np.ndarray]  # subject -> store image row of each trial [744]
    images: list[tuple[Path, int]]  # store row -> (stimuli file, imgBrick row)
    names: list[str]  # store row -> image name


def open_dataset(root: str | Path, options: Mapping[str, Any] | None) -> Opened:
    """Read the design and the stimuli files' headers and set up NSD's sources, without reading betas."""
    root = Path(root)
    opts = resolve_options(ADAPTER, options, DEFAULTS)
    check_choice(ADAPTER, "space", opts["space"], ["func1pt8mm", "func1mm", "fsaverage"])
    check_choice(ADAPTER, "intensity", opts["intensity"], ["sqrt", "raw"])
    check_choice(ADAPTER, "crop", opts["crop"], ["center", "none"])
    opts["roi_sets"] = as_list(opts["roi_sets"]) or []

    master = load_masterordering(expdesign_path(root))
    shared_path = require_file(shared_stimuli_path(root), "NSD-synthetic stimuli", LAYOUT)
    n_shared = _brick_shape(shared_path, "NSD-synthetic stimuli")[0]
    make = SurfaceSource if opts["space"] == "fsaverage" else VolumeSource
    sources = [make(root, s, opts) for s in nsd._subjects(root, opts)]  # subjXX with this betas folder
    for source in sources:
        if not source.available_sessions():
            raise DatasetFileNotFoundError(
                f"nsd_synthetic {source.name}: {source.session_path()} not found. Expected layout: {LAYOUT}"
            )

    images: list[tuple[Path, int]] = [(shared_path, i) for i in range(n_shared)]
    names = [f"nsdsynthetic{i + 1:03d}" for i in range(n_shared)]
    trial_rows = {}
    for source in sources:
        color = master >= n_shared
        row_of = np.arange(n_shared)
        if color.any():
            path = require_file(color_stimuli_path(root, source.name), "NSD-synthetic colour stimuli", LAYOUT)
            n_color = _brick_shape(path, "NSD-synthetic colour stimuli")[0]
            if master.max() >= n_shared + n_color:
                raise format_error(
                    expdesign_path(root),
                    "masterordering",
                    f"reaches image {master.max() + 1}",
                    f"at most {n_shared} shared + {n_color} colour images ({path.name})",
                )
            row_of = np.concatenate([row_of, len(images) + np.arange(n_color)])
            images += [(path, i) for i in range(n_color)]
            names += [f"nsdsynthetic{n_shared + i + 1:03d}_{source.name}" for i in range(n_color)]
        elif master.max() >= n_shared:
            raise format_error(shared_path, "imgBrick", f"has {n_shared} images", f"{master.max() + 1}")
        trial_rows[source.name] = row_of[master]
    return Opened(root, opts, sources, n_shared, trial_rows, images, names)


def _images(ds: Opened) -> Iterator[np.ndarray]:
    """The stimuli in store order, transformed (one file open at a time, a row at a time)."""
    files = list(dict.fromkeys(path for path, _ in ds.images))  # in store order: the rows of a file are adjacent
    for path in progress(files, "nsd_synthetic stimuli files", unit="file"):
        with open_h5(path, "NSD-synthetic stimuli", STIMULI_EXPECTED) as f:
            brick = f["imgBrick"]
            for _, row in (x for x in ds.images if x[0] == path):
                yield transform(brick[row], ds.opts["intensity"], ds.opts["crop"])


# ----------------------------------------------------------------------------------------------------------------
# prepare and check


def _read(source: VolumeSource | SurfaceSource, opts: dict) -> np.ndarray:
    """The session's betas [744, n_voxels], scaled as NSD's (volume int16 / 300) and z-scored within it."""
    betas, dtype = source.read_session(1)
    betas *= volume_scale(dtype, opts["scale"], ADAPTER)
    return zscore_rows(betas) if opts["zscore"] else betas


def prepare(root, out, *, image_size: int, options: dict) -> dict:
    """Prepare NSD-synthetic under ``root`` into the store ``out`` (every trial a test trial)."""
    ds = open_dataset(root, options)
    opts = ds.opts
    report: dict[str, Any] = {"dataset": ADAPTER, "n_images": len(ds.names), "subjects": {}}
    with StoreWriter(out, name=opts["name"], modality="fmri", source=ADAPTER, image_size=image_size) as writer:
        writer.write_images(_images(ds), ds.names)
        for source in progress(ds.sources, "nsd_synthetic subjects", unit="subject"):
            rows = ds.trial_rows[source.name]
            betas = _read(source, opts)
            splits = np.full(rows.size, SPLIT_CODE["test"], dtype=np.int64)
            w = writer.subject(source.name, source.n_voxels)
            w.append(betas, rows.tolist(), splits.tolist())
            nc = noise_ceiling_from_repeats(betas, rows, splits)
            result = w.finish(
                source.coords(),
                rois=source.rois(),
                noise_ceiling=nc,
                attrs={
                    "space": opts["space"],
                    "zscored": bool(opts["zscore"]),
                    "mask_roi": str(opts["mask_roi"] or ""),
                    "heads_of": str(opts["heads_of"]),
                    "intensity": opts["intensity"],
                    "crop": opts["crop"],
                    **nsd._volume_attrs(source),
                },
                layout=source.layout() if isinstance(source, SurfaceSource) else None,
                test_only=True,
            )
            report["subjects"][source.name] = result
    return report


def check(root: Path, options: Mapping[str, Any], *, read_data: bool = True) -> list[CheckRow]:
    """One row per subject, opened as :func:`prepare` opens it; nothing written."""
    ds = open_dataset(root, options)
    rows = []
    for source in ds.sources:
        trial_rows = ds.trial_rows[source.name]
        source.rois()
        nan = nan_columns([source.read_session(1)[0]], source.n_voxels) if read_data else None
        codes = np.full(trial_rows.size, SPLIT_CODE["test"], dtype=np.int64)
        rows.append(check_row(ADAPTER, source.name, codes, len(np.unique(trial_rows)), source.n_voxels, nan))
    return rows


# [unverified] the same 8.4 deg square as NSD (the session used NSD's setup; the manual does not state the size).
VISUAL_ANGLE = nsd.VISUAL_ANGLE

# The NSD terms cover the session (it is part of the NSD release); its natural scenes come from NSD's COCO images.
TERMS = nsd.TERMS

FORMAT = DatasetAdapter(
    name=ADAPTER, defaults=DEFAULTS, prepare=prepare, check=check, visual_angle=VISUAL_ANGLE, terms=TERMS
)
