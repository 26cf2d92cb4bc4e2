"""NSD's measured pRF maps on a prepared store's voxels: what the RetinaMap is checked against.

Files read under the NSD ``root`` (NSD data manual, "Functional data (pRF, fLoc)"; docs/datasets.md)::

    nsddata/ppdata/subjXX/<space>/prf_angle.nii.gz          polar angle of the pRF centre, 0-360 deg: 0 = right
                                                            horizontal meridian, 90 = upper vertical meridian
    nsddata/ppdata/subjXX/<space>/prf_eccentricity.nii.gz   eccentricity of the centre, deg of visual angle
    nsddata/ppdata/subjXX/<space>/prf_size.nii.gz           pRF size, deg
    nsddata/ppdata/subjXX/<space>/prf_R2.nii.gz             variance explained by the pRF model, percent

space = func1pt8mm or func1mm, the grid the subject's betas were prepared on (store attribute ``space``); NaN
outside the brain or where the fit is missing. A stored voxel's grid index comes from its coordinates and the
store's affine (the adapter wrote coords = affine @ ijk), so no other bookkeeping is needed. fsaverage subjects
are not read: NSD's surface pRF maps are on each subject's native surface, not on fsaverage.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from afo.data.files import format_error, reading, require_file
from afo.data.store import PreparedStore, volume_geometry

PRF_MAPS = {"angle": "prf_angle_deg", "eccentricity": "prf_ecc_deg", "size": "prf_size_deg", "R2": "prf_r2"}
VOLUME_SPACES = ("func1pt8mm", "func1mm")
VISUAL_ROI_SET = "prf-visualrois"
LAYOUT = "<root>/nsddata/ppdata/subjXX/<space>/prf_{angle,eccentricity,size,R2}.nii.gz"  # the ROI set of the store whose labels (V1v ... hV4) group the comparison


def prf_path(root: str | Path, subject: str, space: str, quantity: str) -> Path:
    return Path(root) / "nsddata" / "ppdata" / subject / space / f"prf_{quantity}.nii.gz"


def has_prf_maps(root: str | Path, space: str = "func1pt8mm") -> bool:
    """Whether a download holds the pRF eccentricity map of any subject in a volume ``space``."""
    return space in VOLUME_SPACES and any(
        (Path(root) / "nsddata" / "ppdata").glob(f"subj*/{space}/prf_eccentricity.nii.gz")
    )


def grid_indices(coords: np.ndarray, affine: np.ndarray, atol: float = 1e-2) -> np.ndarray:
    """Voxel indices int64 [N, 3] of coordinates [N, 3] (mm) on the grid of ``affine`` [4, 4]."""
    ijk = nib.affines.apply_affine(np.linalg.inv(affine), np.asarray(coords, dtype=np.float64))
    rounded = np.rint(ijk)
    if ijk.size and np.abs(ijk - rounded).max() > atol:
        raise ValueError("stored coordinates do not lie on the store's voxel grid; prepare the store again")
    return rounded.astype(np.int64)


def _read_map(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    with reading(path, "an NSD pRF map", f"a 3-D NIfTI on the {shape} grid of the betas"):
        data = np.asarray(nib.load(path).dataobj, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != shape:
        raise format_error(path, "shape", f"is {data.shape}", f"{shape}, the grid of the prepared betas")
    return data


def prf_table(root: str | Path, store_path: str | Path) -> pd.DataFrame:
    """The measured pRF of every voxel of an NSD store whose subjects have pRF maps in their volume space.

    Columns: subject, voxel (store index), visual_roi (label of the store's prf-visualrois set, '' if none),
    prf_angle_deg, prf_ecc_deg, prf_size_deg, prf_r2. Subjects without maps (or on fsaverage) have no rows.
    """
    frames = []
    with PreparedStore(store_path) as store:
        for subject in store.subjects:
            attrs = store.subject_attrs(subject)
            geometry = volume_geometry(attrs)
            space = str(attrs.get("space", ""))
            if (
                geometry is None
                or space not in VOLUME_SPACES
                or not prf_path(root, subject, space, "eccentricity").is_file()
            ):
                continue
            affine, shape = geometry
            index = tuple(grid_indices(store.coords(subject), affine).T)
            frame = pd.DataFrame({"subject": subject, "voxel": np.arange(len(index[0]))})
            rois = store.info(subject).roi_sets
            frame["visual_roi"] = store.rois(subject, VISUAL_ROI_SET) if VISUAL_ROI_SET in rois else ""
            for quantity, column in PRF_MAPS.items():
                path = require_file(prf_path(root, subject, space, quantity), f"NSD pRF {quantity} map", LAYOUT)
                frame[column] = _read_map(path, shape)[index]
            frames.append(frame)
    columns = ["subject", "voxel", "visual_roi", *PRF_MAPS.values()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
