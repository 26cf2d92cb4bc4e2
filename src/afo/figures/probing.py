"""Probing figures of a trained model, per subject, from its voxels.csv (paper Figures 4-6 and 8).

- RetinaMap (Figure 4): each voxel's RetinaGrid position u coloured by its selected layer (argmax eta); where
  the dataset has a simulated ground truth (``<root>/<subject>/ground_truth.csv`` with u_x, u_y, level), a
  second panel plots the learned u of the early (level 0) voxels against their true receptive-field centres;
  where the dataset's visual angle is known, axes in degrees of visual angle are added;
- LayerSelector (Figure 5): the expected layer and each layer's weight over the voxel coordinates;
- brain maps: test r and ROI label over the voxel coordinates (PNG, every subject) and maps in each dataset's
  own space (r_test, r_test_norm, roi, u_x, u_y, layer, and ecc_deg, angle_deg where voxels.csv has them;
  :mod:`afo.figures.brainmaps`): NIfTI for volumetric
  subjects, MGH per hemisphere for fsaverage subjects (surface NSD), a CIFTI-2 dscalar for grayordinate
  subjects (HCP);
- the veROI dendrogram with its cut (Figure 6);
- per-ROI encoding and retrieval scores (Figure 8).

Volumetric subjects: a subject is volumetric when its prepared store keeps the volume's voxel-to-mm affine and
grid shape as subject attributes ``affine`` (16 numbers or 4 x 4, row-major) and ``volume_shape`` (3 integers),
with the voxel coordinates in mm on that grid. Surface and grayordinate subjects keep a layout
(:class:`afo.data.store.SurfaceLayout`). Subjects with neither (EEG/MEG, the synthetic brain) get PNG maps
only; the map folder's README.txt lists which subjects got which files and why others got none.

Figure files are named ``<dataset>__<subject>.png`` (brain maps: ``<dataset>__<subject>.<map>.png``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from afo.data.store import volume_geometry
from afo.io import atomic_write_text
from afo.io.tables import ordered, read_table, read_voxels

NIFTI_MAPS = ("r_test", "r_test_norm", "roi", "u_x", "u_y", "layer")
DEGREE_MAPS = ("ecc_deg", "angle_deg")  # only for datasets with a visual angle (finite values in voxels.csv)


def file_stem(dataset: str, subject: str) -> str:
    """``<dataset>__<subject>`` with anything but letters, digits, '-', '_' replaced by '-'."""
    clean = lambda s: re.sub(r"[^A-Za-z0-9_\-]", "-", str(s))  # noqa: E731
    return f"{clean(dataset)}__{clean(subject)}"


def subjects_of(voxels: pd.DataFrame) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(dataset, subject, rows sorted by voxel) for every subject of a voxels.csv, in natural order."""
    for dataset in ordered(voxels["dataset"].unique()):
        ds = voxels[voxels["dataset"] == dataset]
        for subject in ordered(ds["subject"].unique()):
            yield dataset, subject, ds[ds["subject"] == subject].sort_values("voxel")


def eta_columns(voxels: pd.DataFrame) -> list[str]:
    return sorted((c for c in voxels.columns if re.fullmatch(r"eta_\d+", c)), key=lambda c: int(c.split("_")[1]))


def _modelled(frame: pd.DataFrame) -> pd.DataFrame:
    """Voxels the model read out (finite u and a layer)."""
    return frame[np.isfinite(frame["u_x"]) & np.isfinite(frame["u_y"]) & frame["layer"].notna()]


def true_centres(ground_truth_root: str | Path | None, subject: str, voxels: np.ndarray) -> np.ndarray | None:
    """True RF centres [n, 2] of the early (level 0) voxels, NaN for the others; None without a ground truth."""
    if ground_truth_root is None:
        return None
    from afo.evaluation.synthetic import modality

    if modality(ground_truth_root) != "fmri":
        return None  # EEG/MEG "voxels" have no receptive-field centre
    path = Path(ground_truth_root) / subject / "ground_truth.csv"
    if not path.is_file():
        return None
    truth = pd.read_csv(path)
    if not {"voxel", "u_x", "u_y", "level"} <= set(truth.columns):
        return None  # e.g. the EEG subject: no receptive-field centres
    truth = truth.set_index("voxel").reindex(voxels)
    centres = truth[["u_x", "u_y"]].to_numpy(dtype=np.float64)
    centres[truth["level"].to_numpy() != 0] = np.nan
    return centres


def retina_maps(
    voxels_csv: str | Path,
    out_dir: str | Path,
    model: str,
    ground_truth: Mapping[str, str | Path] | None = None,
    visual_angles: Mapping[str, float | None] | None = None,
) -> list[Path]:
    """One RetinaMap PNG per subject; ``ground_truth`` = dataset -> folder of ``<subject>/ground_truth.csv``;
    ``visual_angles`` = dataset -> full stimulus width in degrees (None = unknown)."""
    from afo.figures.plots import plot_retina_map

    voxels = read_voxels(voxels_csv)
    n_layers = len(eta_columns(voxels))
    out = []
    for dataset, subject, frame in subjects_of(voxels):
        frame = _modelled(frame)
        if frame.empty:
            continue
        truth = true_centres((ground_truth or {}).get(dataset), subject, frame["voxel"].to_numpy())
        if truth is not None and not np.isfinite(truth).any():
            truth = None
        out.append(
            plot_retina_map(
                frame[["u_x", "u_y"]].to_numpy(),
                frame["layer"].to_numpy(dtype=np.int64),
                n_layers,
                Path(out_dir) / f"{file_stem(dataset, subject)}.png",
                f"{model}: {dataset} / {subject}",
                true_u=truth,
                visual_angle=(visual_angles or {}).get(dataset),
            )
        )
    return out


def layer_selector_maps(voxels_csv: str | Path, out_dir: str | Path, model: str) -> list[Path]:
    """One LayerSelector PNG per subject (expected layer and eta_l over the voxel coordinates)."""
    from afo.figures.plots import plot_layer_selector

    voxels = read_voxels(voxels_csv)
    etas = eta_columns(voxels)
    out = []
    for dataset, subject, frame in subjects_of(voxels):
        frame = _modelled(frame)
        if frame.empty:
            continue
        out.append(
            plot_layer_selector(
                frame[["x", "y", "z"]].to_numpy(),
                frame[etas].to_numpy(),
                Path(out_dir) / f"{file_stem(dataset, subject)}.png",
                f"{model}: {dataset} / {subject}",
            )
        )
    return out


def roi_codes(labels: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """ROI labels -> float codes (NaN = no label): the integers themselves when every label is one, else 1..K in
    natural order; returns the codes and the code -> label table."""
    labels = np.asarray(labels, dtype=object).astype(str)
    names = ordered(set(labels) - {"", "nan"})
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        table = {int(n): n for n in names}
    else:
        table = {i + 1: n for i, n in enumerate(names)}
    lookup = {v: k for k, v in table.items()}
    codes = np.array([lookup.get(x, np.nan) for x in labels], dtype=np.float64)
    return codes, table


def brain_maps(
    voxels_csv: str | Path,
    stores: Mapping[str, str | Path],
    png_dir: str | Path,
    nifti_dir: str | Path,
    model: str,
) -> dict:
    """PNG maps of test r and ROI per subject; maps in each subject's own space (NIfTI, MGH, CIFTI) under
    ``nifti_dir`` (see the module docstring)."""
    from afo.data.store import PreparedStore
    from afo.figures.brainmaps import write_cifti_maps, write_surface_maps, write_volume_maps
    from afo.figures.plots import plot_brain_scores

    voxels = read_voxels(voxels_csv)
    png_dir, nifti_dir = Path(png_dir), Path(nifti_dir)
    nifti_dir.mkdir(parents=True, exist_ok=True)
    pngs, niftis, notes = [], [], []
    for dataset, subject, frame in subjects_of(voxels):
        stem = file_stem(dataset, subject)
        title = f"{model}: {dataset} / {subject}"
        coords = frame[["x", "y", "z"]].to_numpy(dtype=np.float64)
        r = frame["r_test"].to_numpy(dtype=np.float64)
        pngs.append(
            plot_brain_scores(
                coords,
                r,
                png_dir / f"{stem}.r_test.png",
                f"{title}: test r",
                "viridis",
                vmin=min(0.0, np.nanmin(r)) if np.isfinite(r).any() else None,
                label="test Pearson r",
            )
        )
        codes, table = roi_codes(frame["roi"].to_numpy())
        if np.isfinite(codes).any():
            pngs.append(
                plot_brain_scores(
                    coords,
                    codes,
                    png_dir / f"{stem}.roi.png",
                    f"{title}: ROI",
                    "tab20",
                    label="ROI (" + ", ".join(f"{k}={v}" for k, v in table.items())[:60] + ")",
                )
            )
        # RF position in degrees (datasets with a visual angle): eccentricity and polar angle (cyclic colours)
        for name, cmap, top, label in (
            ("ecc_deg", "magma", None, "RF eccentricity (deg)"),
            ("angle_deg", "twilight", 360.0, "RF polar angle (deg; 0 right, 90 up)"),
        ):
            values = frame[name].to_numpy(dtype=np.float64) if name in frame else np.full(len(frame), np.nan)
            if np.isfinite(values).any():
                path = png_dir / f"{stem}.{name}.png"
                pngs.append(
                    plot_brain_scores(coords, values, path, f"{title}: {label}", cmap, vmin=0.0, vmax=top, label=label)
                )
        if dataset not in stores:
            notes.append(f"{dataset}/{subject}: no prepared store given, no NIfTI maps")
            continue
        with PreparedStore(stores[dataset]) as store:
            known = subject in store.subjects
            geometry = volume_geometry(store.subject_attrs(subject)) if known else None
            layout = store.layout(subject) if known else None
            store_coords = store.coords(subject) if known else None
        if geometry is None and layout is None:
            notes.append(
                f"{dataset}/{subject}: no volume grid or surface layout in its store (EEG/MEG, or a "
                "layout-free dataset), PNG maps only"
            )
            continue
        if len(frame) != len(store_coords) or not np.array_equal(
            frame["voxel"].to_numpy(), np.arange(len(store_coords))
        ):
            raise ValueError(f"{voxels_csv}: {dataset}/{subject} does not list every voxel of its store once")
        maps = {
            "r_test": r,
            "r_test_norm": frame["r_test_norm"].to_numpy(dtype=np.float64),
            "roi": codes,
            "u_x": frame["u_x"].to_numpy(dtype=np.float64),
            "u_y": frame["u_y"].to_numpy(dtype=np.float64),
            "layer": pd.to_numeric(frame["layer"], errors="coerce").to_numpy(dtype=np.float64),
        }
        for name in DEGREE_MAPS:
            if name in frame and np.isfinite(frame[name].to_numpy(dtype=np.float64)).any():
                maps[name] = frame[name].to_numpy(dtype=np.float64)
        if geometry is not None:
            files = write_volume_maps(nifti_dir / stem, store_coords, *geometry, maps)
        elif layout.kind == "fsaverage":
            files = write_surface_maps(nifti_dir / stem, layout, maps)
        else:
            files = [write_cifti_maps(nifti_dir / f"{stem}.dscalar.nii", layout, maps)]
        niftis += files
        atomic_write_text(nifti_dir / f"{stem}_roi.json", json.dumps({str(k): v for k, v in table.items()}, indent=1))
        notes.append(f"{dataset}/{subject}: {', '.join(p.name for p in files)}")
    readme = (
        f"Maps of model {model} in each subject's own space: NIfTI (.nii.gz) for volumes, MGH per hemisphere "
        "(lh./rh. ... .mgh) on fsaverage, a CIFTI-2 dscalar (.dscalar.nii, one row per map) on grayordinates. "
        "float32, NaN = not a voxel; roi codes are listed in <subject>_roi.json; layer 0 = shallowest.\n\n"
        + "\n".join(notes)
        + "\n"
    )
    atomic_write_text(nifti_dir / "README.txt", readme)
    return {"png": len(pngs), "nifti": len(niftis)}


def dendrogram(
    clustering_npz: str | Path, path: str | Path, title: str = "veROI: Ward clustering of the k-means centroids"
) -> Path:
    """The veROI dendrogram with its cut (from the ``rois veroi --clustering`` file)."""
    from afo.figures.plots import plot_dendrogram

    with np.load(clustering_npz) as npz:
        linkage = npz["linkage"]
        cut = float(npz["cut_height"])
        kmeans = npz["kmeans_labels"]
    if linkage.shape[0] < 1:
        raise ValueError(f"{clustering_npz}: a single k-means cluster has no dendrogram")
    counts = np.bincount(kmeans, minlength=linkage.shape[0] + 1)
    return plot_dendrogram(linkage, cut, path, title, leaf_counts=counts)


def roi_score_figures(
    voxels_csv: str | Path, retrieval_csv: str | Path, roi_set: str, out_dir: str | Path, model: str
) -> list[Path]:
    """Per subject, encoding (mean +- s.e.m. of test r) and retrieval (top-1, top-5) per ROI of ``roi_set``,
    with 'all' first (Figure 8)."""
    from afo.figures.plots import plot_roi_scores

    voxels = read_voxels(voxels_csv)
    retrieval = read_table(retrieval_csv)
    out = []
    for dataset, subject, frame in subjects_of(voxels):
        mine = retrieval[(retrieval["dataset"] == dataset) & (retrieval["subject"] == subject)]
        rows = []
        groups = [("all", frame)] + [(roi, frame[frame["roi"] == roi]) for roi in ordered(set(frame["roi"]) - {""})]
        for roi, members in groups:
            r = members["r_test"].to_numpy(dtype=np.float64)
            r = r[np.isfinite(r)]
            hit = mine[(mine["roi_set"] == ("all" if roi == "all" else roi_set)) & (mine["roi"] == roi)]
            rows.append(
                {
                    "roi": roi,
                    "mean_r": r.mean() if r.size else np.nan,
                    "sem_r": r.std(ddof=1) / np.sqrt(r.size) if r.size > 1 else np.nan,
                    "top1": hit["top1"].iloc[0] if len(hit) else np.nan,
                    "top5": hit["top5"].iloc[0] if len(hit) else np.nan,
                    "n_candidates": hit["n_candidates"].iloc[0] if len(hit) else np.nan,
                }
            )
        out.append(
            plot_roi_scores(
                pd.DataFrame(rows),
                Path(out_dir) / f"{file_stem(dataset, subject)}.png",
                f"{model}: {dataset} / {subject}, per {roi_set} ROI",
            )
        )
    return out


def model_figures(
    voxels_csv: str | Path,
    model: str,
    stores: Mapping[str, str | Path],
    retina_dir: str | Path,
    layers_dir: str | Path,
    brain_dir: str | Path,
    nifti_dir: str | Path,
    ground_truth: Mapping[str, str | Path] | None = None,
    visual_angles: Mapping[str, float | None] | None = None,
) -> dict:
    """Every probing figure of one model: RetinaMap, LayerSelector and brain maps per subject (+ NIfTI maps)."""
    for folder in (retina_dir, layers_dir, brain_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    return {
        "retina_map": len(retina_maps(voxels_csv, retina_dir, model, ground_truth, visual_angles)),
        "layer_selector": len(layer_selector_maps(voxels_csv, layers_dir, model)),
        "brain_maps": brain_maps(voxels_csv, stores, brain_dir, nifti_dir, model),
    }
