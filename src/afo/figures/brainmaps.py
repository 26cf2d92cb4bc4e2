"""Maps of per-voxel results in each dataset's own space: NIfTI volumes, MGH on fsaverage, CIFTI-2 dscalar.

- **Volumes** (:func:`write_volume_maps`; FSLeyes, FreeView, MRIcroGL, nilearn, ...). A volumetric subject stores
  each voxel's physical coordinates in mm together with the affine and shape of the volume they come from.
  :func:`voxel_indices_from_coords` inverts the affine to recover each voxel's integer grid index; one
  ``.nii.gz`` per map (score, veROI label, u_x, u_y, selected layer, ...) in the subject's own space:

  - data type float32 for every map (labels and layers included, so every map reads the same way);
  - grid points that are not one of the subject's voxels hold ``fill_value``, NaN by default: 0 is a real
    value of several maps (layer 0, u = 0, r = 0), so it cannot mean "no voxel". Viewers show NaN as
    transparent/empty; pass ``fill_value=0`` for tools that cannot handle NaN;
  - the affine is stored as sform and qform (code 1, scanner anatomical; the qform is left unset if the
    affine has a shear it cannot represent), units mm;
  - ``cal_min`` / ``cal_max`` hold the map's finite range, so viewers open with a sensible window despite NaN.

- **fsaverage surfaces** (:func:`write_surface_maps`; FreeView ``-f lh.inflated:overlay=...``, nilearn,
  FreeSurfer tools): one MGH file per hemisphere and map, ``lh.<prefix>_<map>.mgh`` (FreeSurfer's hemisphere
  prefix), float32 of shape (n_vertices, 1, 1) as FreeSurfer writes surface overlays, with the value of each
  stored voxel at its fsaverage vertex and ``fill_value`` (NaN) at the other vertices.

- **CIFTI grayordinates** (:func:`write_cifti_maps`; wb_view, wb_command, nibabel): one ``.dscalar.nii`` per
  subject holding every map as a row: a ScalarAxis (one named row per map) by a BrainModelAxis rebuilt from the
  store's layout (structure, surface vertex or volume voxel, vertex counts of each surface, the volume affine
  and shape), i.e. exactly the grayordinates the dataset's CIFTI file had and the store kept, so the maps line
  up with the HCP surfaces in wb_view. Intent NIFTI_INTENT_CONNECTIVITY_DENSE_SCALARS (3006).

Every file is written to a temporary name in the target folder and renamed into place (atomic on one file
system), so a job killed mid-write never leaves a truncated map behind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from afo.data.store import SurfaceLayout
from afo.io import atomic_path

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_affine(affine) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if not np.allclose(affine[3], [0, 0, 0, 1]):
        raise ValueError(f"affine's last row must be [0, 0, 0, 1], got {affine[3]}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine is singular")
    return affine


def voxel_indices_from_coords(coords_mm: np.ndarray, affine: np.ndarray, atol: float = 1e-2) -> np.ndarray:
    """Integer grid indices [N, 3] (i, j, k) of voxel coordinates [N, 3] in mm under ``affine`` [4, 4].

    Args:
        coords_mm: [N, 3] physical coordinates (mm) of the voxel centres.
        affine: [4, 4] voxel-to-mm affine of the subject's volume (as in a NIfTI header).
        atol: tolerance, in voxels, for a coordinate to count as lying on a grid point (float32 coordinates
            of a 1.8 mm grid miss it by ~1e-6 voxels; a wrong affine misses by a large fraction of a voxel).

    Returns:
        int64 [N, 3] array of (i, j, k).

    Raises:
        ValueError: on bad shapes, non-finite coordinates, or coordinates more than ``atol`` voxels away
            from a grid point of the affine (the message gives how many and the worst one).
    """
    coords = np.asarray(coords_mm, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords_mm must have shape [N, 3], got {coords.shape}")
    if not np.all(np.isfinite(coords)):
        raise ValueError("coords_mm contains NaN or inf")
    affine = _check_affine(affine)
    inverse = np.linalg.inv(affine)
    ijk = coords @ inverse[:3, :3].T + inverse[:3, 3]
    rounded = np.rint(ijk)
    off = np.max(np.abs(ijk - rounded), axis=1) if coords.shape[0] else np.zeros(0)
    bad = off > atol
    if bad.any():
        worst = int(np.argmax(off))
        raise ValueError(
            f"{int(bad.sum())} of {coords.shape[0]} coordinates do not lie on the affine's voxel grid "
            f"(tolerance {atol} voxels); worst: voxel {worst} at {coords[worst].tolist()} mm maps to "
            f"ijk {np.round(ijk[worst], 4).tolist()}. Are the coordinates and the affine from the same volume?"
        )
    return rounded.astype(np.int64)


def _check_maps(maps: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Every map as float32 [n], or a ValueError naming the map (bad name, shape or type)."""
    if not maps:
        raise ValueError("maps is empty: nothing to write")
    checked: dict[str, np.ndarray] = {}
    for name, values in maps.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"map name {name!r} is not a safe file name (letters, digits, _ - .)")
        values = np.asarray(values)
        if values.shape != (n,):
            raise ValueError(f"map {name!r} must have shape ({n},), got {values.shape}")
        if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
            raise ValueError(f"map {name!r} must be numeric (map string labels to integers first), got {values.dtype}")
        checked[name] = values.astype(np.float32)
    return checked


def _map_path(path_prefix: str | os.PathLike, name: str) -> Path:
    """``{prefix}_{name}.nii.gz``, or ``{prefix}/{name}.nii.gz`` when the prefix ends with a path separator."""
    prefix = os.fspath(path_prefix)
    if prefix.endswith(("/", os.sep)):
        return Path(prefix) / f"{name}.nii.gz"
    return Path(f"{prefix}_{name}.nii.gz")


def write_volume_maps(
    path_prefix: str | os.PathLike,
    coords_mm: np.ndarray,
    affine: np.ndarray,
    shape: Sequence[int],
    maps: Mapping[str, np.ndarray],
    *,
    fill_value: float = np.nan,
    atol: float = 1e-2,
) -> list[Path]:
    """Write one float32 NIfTI volume per map, in the subject's space.

    Args:
        path_prefix: output prefix; map ``name`` goes to ``{prefix}_{name}.nii.gz`` (or
            ``{prefix}/{name}.nii.gz`` when the prefix ends with "/"). Folders are created.
        coords_mm: [N, 3] voxel coordinates in mm.
        affine: [4, 4] voxel-to-mm affine of the volume.
        shape: (X, Y, Z) of the volume.
        maps: name -> [N] numeric values per voxel (NaN allowed; written as NaN). Names: letters, digits,
            "_", "-", "." (they become file names).
        fill_value: value of grid points that are not voxels (NaN by default, see module docstring).
        atol: grid tolerance of :func:`voxel_indices_from_coords`.

    Returns:
        the written paths, in the order of ``maps``.

    Raises:
        ValueError: bad shapes, off-grid or out-of-volume coordinates, two voxels on one grid point,
            non-numeric maps, unsafe names.
    """
    import nibabel as nib

    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (X, Y, Z) with positive sizes, got {shape}")
    affine = _check_affine(affine)
    ijk = voxel_indices_from_coords(coords_mm, affine, atol=atol)
    n = ijk.shape[0]
    outside = np.any((ijk < 0) | (ijk >= np.asarray(shape)), axis=1)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{int(outside.sum())} voxels fall outside the volume {shape}; e.g. voxel {first} at ijk "
            f"{ijk[first].tolist()}"
        )
    flat = np.ravel_multi_index(tuple(ijk.T), shape)
    if np.unique(flat).size != n:
        raise ValueError("two or more voxels map to the same grid point; coordinates are not unique voxels")
    checked = _check_maps(maps, n)

    written: list[Path] = []
    for name, values in checked.items():
        volume = np.full(shape, fill_value, dtype=np.float32)
        volume.reshape(-1)[flat] = values  # C-order ravel matches np.ravel_multi_index's default
        image = nib.Nifti1Image(volume, affine)
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1)
        if not np.allclose(image.get_qform(), affine, atol=1e-4):
            # A qform cannot hold a shear; an approximate one would misplace the map in viewers that prefer
            # the qform, so it is left unset (code 0) and every viewer uses the exact sform.
            image.set_qform(None, code=0)
        header = image.header
        header.set_xyzt_units(xyz="mm")
        finite = values[np.isfinite(values)]
        if finite.size:
            header["cal_min"], header["cal_max"] = float(finite.min()), float(finite.max())
        header["descrip"] = f"afo {name}"[:79].encode()
        out = _map_path(path_prefix, name)
        # The temporary name must end in .nii.gz: nibabel picks gzip compression from the file name.
        with atomic_path(out, suffix=".tmp.nii.gz") as tmp:
            nib.save(image, tmp)
        written.append(out)
    return written


def _prefixed(path_prefix: str | os.PathLike, name: str, hemi: str, suffix: str) -> Path:
    """``{folder}/{hemi}.{stem}_{name}{suffix}`` (``{folder}/{hemi}.{name}{suffix}`` for a prefix ending in "/")."""
    prefix = os.fspath(path_prefix)
    if prefix.endswith(("/", os.sep)):
        return Path(prefix) / f"{hemi}.{name}{suffix}"
    folder, stem = os.path.split(prefix)
    return Path(folder) / f"{hemi}.{stem}_{name}{suffix}"


def write_surface_maps(
    path_prefix: str | os.PathLike,
    layout: SurfaceLayout,
    maps: Mapping[str, np.ndarray],
    *,
    fill_value: float = np.nan,
) -> list[Path]:
    """Write one float32 MGH overlay per map and fsaverage hemisphere (see the module docstring).

    Args:
        path_prefix: map ``name`` of hemisphere ``lh`` goes to ``{folder}/lh.{stem}_{name}.mgh``, where the prefix
            is ``{folder}/{stem}`` (or ``{folder}/lh.{name}.mgh`` when it ends with "/").
        layout: the subject's store layout, kind ``fsaverage`` (hemisphere and vertex of each of the N voxels).
        maps: name -> [N] numeric values per voxel (NaN allowed).
        fill_value: value of the vertices that are not voxels.

    Returns:
        the written paths: for each map, lh then rh (hemispheres without any voxel get a file of fill values too,
        so a viewer always finds both).

    Raises:
        ValueError: a layout of another kind, a voxel placed twice, bad maps.
    """
    import nibabel as nib

    if layout.kind != "fsaverage":
        raise ValueError(f"write_surface_maps needs an fsaverage layout, got {layout.kind!r}")
    structure = np.asarray(layout.structure, dtype=object)
    vertex = np.asarray(layout.index)[:, 0]
    checked = _check_maps(maps, structure.size)
    hemis = [h for h in ("lh", "rh") if h in layout.n_vertices]
    unknown = sorted(set(structure.tolist()) - set(hemis))
    if unknown:
        raise ValueError(f"layout names hemispheres {unknown}; fsaverage maps are written for lh and rh")
    for hemi in hemis:
        own = vertex[structure == hemi]
        if np.unique(own).size != own.size:
            raise ValueError(f"two voxels sit on one {hemi} vertex; the layout is not one voxel per vertex")
    written: list[Path] = []
    for name, values in checked.items():
        for hemi in hemis:
            rows = structure == hemi
            data = np.full(int(layout.n_vertices[hemi]), fill_value, dtype=np.float32)
            data[vertex[rows]] = values[rows]
            # (n_vertices, 1, 1): the shape FreeSurfer gives surface overlays (mri_surf2surf, mris_preproc)
            image = nib.MGHImage(data.reshape(-1, 1, 1), np.eye(4))
            out = _prefixed(path_prefix, name, hemi, ".mgh")
            with atomic_path(out, suffix=".tmp.mgh") as tmp:
                nib.save(image, tmp)
            written.append(out)
    return written


def cifti_brain_models(layout: SurfaceLayout):
    """The nibabel ``BrainModelAxis`` of a ``cifti`` layout: its grayordinates in the store's voxel order."""
    import nibabel as nib

    if layout.kind != "cifti":
        raise ValueError(f"a CIFTI brain-model axis needs a cifti layout, got {layout.kind!r}")
    index = np.asarray(layout.index, dtype=np.int64)
    surface = index[:, 1] < 0
    vertex = np.where(surface, index[:, 0], -1)
    voxel = np.where(surface[:, None], -1, index)
    has_volume = bool((~surface).any())
    return nib.cifti2.BrainModelAxis(
        name=np.asarray(layout.structure, dtype=object),
        voxel=voxel,
        vertex=vertex,
        affine=np.asarray(layout.volume_affine) if has_volume else None,
        volume_shape=tuple(layout.volume_shape) if has_volume else None,
        nvertices={k: int(v) for k, v in layout.n_vertices.items()},
    )


def write_cifti_maps(path: str | os.PathLike, layout: SurfaceLayout, maps: Mapping[str, np.ndarray]) -> Path:
    """Write every map as one row of a CIFTI-2 dscalar file on the layout's grayordinates (module docstring).

    Args:
        path: the ``.dscalar.nii`` file.
        layout: the subject's store layout, kind ``cifti``, for its N voxels (grayordinates).
        maps: name -> [N] numeric values per grayordinate (NaN allowed); the names become the ScalarAxis rows.

    Returns:
        ``path``.
    """
    import nibabel as nib

    brain_models = cifti_brain_models(layout)
    checked = _check_maps(maps, len(brain_models))
    scalars = nib.cifti2.ScalarAxis(list(checked))
    data = np.stack(list(checked.values())).astype(np.float32)  # [n_maps, n_grayordinates]
    image = nib.Cifti2Image(data, header=nib.cifti2.Cifti2Header.from_axes((scalars, brain_models)))
    image.nifti_header.set_intent("ConnDenseScalar")
    path = Path(path)
    if not path.name.endswith(".dscalar.nii"):
        raise ValueError(f"{path}: a CIFTI dense scalar file must end in .dscalar.nii")
    with atomic_path(path, suffix=".tmp.dscalar.nii") as tmp:
        nib.save(image, tmp)
    return path
