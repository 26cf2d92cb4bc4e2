"""Algonauts 2021 (Cichy et al. 2021): 10 subjects, 3T fMRI, responses to 3-second video clips.

Files read under ``root``. Sources in brackets: [D] the challenge devkit,
Neural-Dynamics-of-Visual-Cognition-FUB/Algonauts2021_devkit (perform_encoding.py: ``ROI_data["train"]`` is
#train_vids x #repetitions x #voxels, ``voxel_mask`` of WB, ``np.zeros((78,93,71))[voxel_mask==1] = score``, the
900/100 validation split, 102 test videos, example.nii as the volume template; utils/helper.py: pickles loaded
with latin1); [R] public loaders' file trees (folder names, 10 subjects, 1000 training videos, 3 repetitions)::

    AlgonautsVideos268_All_30fpsmax/*.mp4           1102 clips [D: 1000 train + 102 test]; sorted by name, the
                                                     first ``train_videos`` (1000) have fMRI [R]
    participants_data_v2021/full_track/subXX/WB.pkl  dict: train (1000 videos, 3 reps, voxels), voxel_mask
                                                     (78, 93, 71) [D]
    participants_data_v2021/mini_track/subXX/<ROI>.pkl  dict: train (1000, 3, voxels) [D];
                                                     ROIs V1 V2 V3 V4 LOC EBA FFA STS PPA [R]

Every pickle must cover exactly ``train_videos`` videos (default 1000, the release's training videos); a file
that covers another number is an error naming that file and the count it should have (never a comparison with
another subject's file).

The .pkl files are pickles (read with latin1 encoding, as the challenge's devkit does). Unpickling can run code:
they are opened only from the folder the user names as ``root`` (or ``fmri_dir``), so name only files you trust.

Trials: every (video, repetition) is one trial, so each image has 3 trials and the noise ceiling comes from those
repeats. Image: the middle frame of each clip (the paper uses one frame per video), decoded with PyAV. The test
fMRI was never released: the 1000 videos are split in name order, the first ``n_train`` (900) train, the next
``n_val`` (60) val, the rest (40) test, as the devkit's 900/100 validation split with the held-out 100 divided
into val and test.

Voxels and coordinates:
  full track: the WB voxels; voxel v sits at the v-th entry of ``argwhere(voxel_mask == 1)`` (C order, as the
  devkit fills ``mask[voxel_mask == 1] = scores``), in MNI mm through the documented affine (2.5 x 2.5 x 2.75 mm
  voxels, origin (-96.5, -132.5, -78.5) [unverified: from our notes, not read from example.nii here]; option
  ``affine`` or ``affine_from`` (a NIfTI such as the devkit's example.nii, the template the devkit saves maps
  with [D]) overrides it). ROI labels come from the mini-track files when they are present: a WB voxel whose
  responses equal an ROI voxel's responses gets that ROI's name.
  mini track: the chosen ROIs' voxels concatenated; their positions are found the same way in WB.pkl when the
  full track is there too, otherwise each ROI is laid on its own evenly spaced grid block (2.5 mm spacing,
  blocks side by side along x), the paper's fallback for data without positions.

[unverified] that mini-track ROI voxels are exactly columns of WB (the matching above); voxels that match
nothing get the label '' (full track) or the grid layout (mini track), never dropped.

Big brain (``bigbrain: true``): the subjects are concatenated into one subject (see afo.data.bigbrain).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from afo.data.adapter import CheckRow, DatasetAdapter, check_row
from afo.data.bigbrain import subject_target
from afo.data.files import DatasetFileNotFoundError, format_error, load_trusted_pickle, reading
from afo.data.media import middle_frame
from afo.data.options import (
    AdapterOptionError,
    as_list,
    check_choice,
    parse_subject_number,
    progress,
    resolve_options,
    warn,
)
from afo.data.store import SPLIT_CODE, StoreWriter

ADAPTER = "algonauts2021"
MINI_ROIS = ["V1", "V2", "V3", "V4", "LOC", "EBA", "FFA", "STS", "PPA"]
MASK_SHAPE = (78, 93, 71)
TRAIN_VIDEOS = 1000  # videos with released fMRI: the first 1000 of the 1102 clips, sorted by name
VIDEOS_DIR = "AlgonautsVideos268_All_30fpsmax"
MNI_AFFINE = [
    [2.5, 0.0, 0.0, -96.5],
    [0.0, 2.5, 0.0, -132.5],
    [0.0, 0.0, 2.75, -78.5],
    [0.0, 0.0, 0.0, 1.0],
]

DEFAULTS: dict[str, Any] = {
    "name": "algonauts2021",
    "track": "full",
    "subjects": None,
    "rois": None,
    "videos_dir": None,
    "fmri_dir": None,
    "train_videos": TRAIN_VIDEOS,
    "n_train": 900,
    "n_val": 60,
    "affine": None,
    "affine_from": None,
    "bigbrain": False,
}

LAYOUT = (
    "<root>/AlgonautsVideos268_All_30fpsmax/*.mp4, "
    "<root>/participants_data_v2021/{full_track,mini_track}/subXX/{WB,V1,...}.pkl"
)
PICKLE_EXPECTED = "a pickled dict with 'train' (videos, 3, voxels) [and 'voxel_mask' (78, 93, 71) in WB.pkl]"


def _train_array(data: Any, path: Path, n_videos: int) -> np.ndarray:
    """``data['train']`` [n_videos, repetitions, voxels] of one pickle; every file must cover the training videos."""
    if not isinstance(data, dict) or "train" not in data:
        raise format_error(path, "train", "is missing", PICKLE_EXPECTED)
    train = np.asarray(data["train"], dtype=np.float32)
    if train.ndim != 3:
        raise format_error(path, "train", f"has shape {train.shape}", "(videos, repetitions, voxels)")
    if train.shape[0] != n_videos:
        raise format_error(
            path,
            "train",
            f"covers {train.shape[0]} videos",
            f"{n_videos}, one row per training video (the first {n_videos} clips of {VIDEOS_DIR} by name; the "
            f"release has {TRAIN_VIDEOS}). Re-download this file, or set option train_videos if your copy differs",
        )
    return train


def _column_keys(train: np.ndarray) -> list[bytes]:
    """One key per voxel: a 128-bit digest of its responses to every video and repetition (exact matches only)."""
    cols = np.ascontiguousarray(train.reshape(-1, train.shape[2]).T)
    return [hashlib.blake2b(c.tobytes(), digest_size=16).digest() for c in cols]


class Subject:
    def __init__(self, fmri_dir: Path, name: str, opts: dict, affine: np.ndarray):
        self.name, self.opts, self.affine = name, opts, affine
        self.full_dir = fmri_dir / "full_track" / name
        self.mini_dir = fmri_dir / "mini_track" / name

    def _mini(self) -> dict[str, tuple[Path, np.ndarray]]:
        rois = as_list(self.opts["rois"]) or [r for r in MINI_ROIS if (self.mini_dir / f"{r}.pkl").exists()]
        out = {}
        for roi in rois:
            path = self.mini_dir / f"{roi}.pkl"
            data = load_trusted_pickle(path, f"mini-track ROI {roi}", LAYOUT)
            out[roi] = (path, _train_array(data, path, int(self.opts["train_videos"])))
        return out

    def _whole_brain(self, required: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """(train [videos, 3, voxels], ijk [voxels, 3]) from WB.pkl."""
        path = self.full_dir / "WB.pkl"
        if not path.exists():
            if required:
                raise DatasetFileNotFoundError(f"{path}: full-track WB.pkl not found. Expected layout: {LAYOUT}")
            return None
        data = load_trusted_pickle(path, "full-track WB", LAYOUT)
        train = _train_array(data, path, int(self.opts["train_videos"]))
        if "voxel_mask" not in data:
            raise format_error(path, "voxel_mask", "is missing", PICKLE_EXPECTED)
        mask = np.asarray(data["voxel_mask"])
        if mask.ndim != 3:
            raise format_error(path, "voxel_mask", f"has shape {mask.shape}", f"a 3-D volume {MASK_SHAPE}")
        ijk = np.argwhere(mask == 1)  # C order: the order of the voxels in 'train'
        if len(ijk) != train.shape[2]:
            raise format_error(
                path,
                "voxel_mask",
                f"marks {len(ijk)} voxels but train has {train.shape[2]}",
                "one mask voxel (== 1) per column of train",
            )
        return train, ijk

    def load(self) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
        """(train [videos, 3, voxels], coords [voxels, 3] mm, ROI sets)."""
        if self.opts["track"] == "full":
            train, ijk = self._whole_brain(required=True)
            labels = [""] * train.shape[2]
            if self.mini_dir.is_dir():
                where = {k: v for v, k in enumerate(_column_keys(train))}
                for roi, (_, roi_train) in self._mini().items():
                    for key in _column_keys(roi_train):
                        if key in where and not labels[where[key]]:
                            labels[where[key]] = roi
            rois = {"algonauts": labels} if any(labels) else {}
            return train, nib.affines.apply_affine(self.affine, ijk).astype(np.float32), rois
        mini = self._mini()
        if not mini:
            raise DatasetFileNotFoundError(f"{self.mini_dir}: no mini-track ROI pickles. Expected layout: {LAYOUT}")
        first_path, first_train = next(iter(mini.values()))
        for path, t in mini.values():
            if t.shape[1] != first_train.shape[1]:
                raise format_error(
                    path,
                    "train",
                    f"has {t.shape[1]} repetitions",
                    f"{first_train.shape[1]} like {first_path.name} (the same in every ROI file)",
                )
        train = np.concatenate([t for _, t in mini.values()], axis=2)
        labels = [roi for roi, (_, t) in mini.items() for _ in range(t.shape[2])]
        coords = self._mini_coords(mini)
        return train, coords, {"algonauts": labels}

    def _mini_coords(self, mini: dict[str, tuple[Path, np.ndarray]]) -> np.ndarray:
        wb = self._whole_brain(required=False)
        blocks, x0 = [], 0.0
        found = None
        if wb is not None:
            found = {k: v for v, k in enumerate(_column_keys(wb[0]))}
            wb_mm = nib.affines.apply_affine(self.affine, wb[1])
        unmatched = 0
        for _roi, (_, t) in mini.items():
            keys = _column_keys(t)
            hits = [found.get(k) for k in keys] if found is not None else [None] * len(keys)
            if all(h is not None for h in hits):
                blocks.append(wb_mm[np.asarray(hits)])
                continue
            unmatched += 1
            side = int(np.ceil(len(keys) ** (1 / 3)))
            g = np.stack(np.unravel_index(np.arange(len(keys)), (side, side, side)), axis=1) * 2.5
            blocks.append(g + np.array([x0 + 1000.0, 0.0, 0.0]))  # far from any brain position
            x0 += side * 2.5 + 10.0
        if unmatched:
            warn(f"algonauts2021 {self.name}: {unmatched} ROI(s) have no position in WB.pkl; laid on grid blocks")
        return np.concatenate(blocks).astype(np.float32)


def _affine(opts: dict) -> np.ndarray:
    if opts["affine_from"]:
        path = Path(opts["affine_from"])
        with reading(path, "the NIfTI whose affine places voxel_mask", "a NIfTI on the 78 x 93 x 71 grid"):
            return nib.load(path).affine
    affine = np.asarray(opts["affine"] if opts["affine"] is not None else MNI_AFFINE, dtype=np.float64)
    if affine.shape != (4, 4):
        raise AdapterOptionError(f"{ADAPTER}: option affine must be a 4 x 4 matrix, got shape {affine.shape}")
    return affine


@dataclass
class Opened:
    """What :func:`prepare` knows before reading any pickle: the subjects, the video files with fMRI, the split."""

    opts: dict
    subjects: list[Subject]
    videos: list[Path]  # the train_videos clips with fMRI, in name order (the store's image order)
    video_split: np.ndarray  # [n_videos] split code of each video


def open_dataset(root: str | Path, options: dict | None) -> Opened:
    """Find Algonauts 2021's subjects and videos and set the split, as :func:`prepare` will."""
    root = Path(root)
    opts = resolve_options(ADAPTER, options, DEFAULTS)
    check_choice(ADAPTER, "track", opts["track"], ["full", "mini"])
    videos_dir = Path(opts["videos_dir"]) if opts["videos_dir"] else root / VIDEOS_DIR
    fmri_dir = Path(opts["fmri_dir"]) if opts["fmri_dir"] else root / "participants_data_v2021"
    if not videos_dir.is_dir():
        raise DatasetFileNotFoundError(f"{videos_dir}: video folder not found (option videos_dir). Expected: {LAYOUT}")
    track_dir = fmri_dir / f"{opts['track']}_track"
    if opts["subjects"] is None:
        names = sorted(p.name for p in track_dir.glob("sub[0-9][0-9]") if p.is_dir())
        if not names:
            raise DatasetFileNotFoundError(f"{track_dir}: no subXX folders. Expected layout: {LAYOUT}")
    else:
        names = [f"sub{parse_subject_number(s, 'sub01 or 1', ADAPTER):02d}" for s in as_list(opts["subjects"])]
    affine = _affine(opts)
    subjects = [Subject(fmri_dir, n, opts, affine) for n in names]

    videos = sorted(videos_dir.glob("*.mp4"))
    n_fmri = int(opts["train_videos"])  # every subject's pickles are checked against this count as they load
    if n_fmri <= 0:
        raise AdapterOptionError(f"{ADAPTER}: option train_videos must be a positive count, got {n_fmri}")
    if len(videos) < n_fmri:
        raise DatasetFileNotFoundError(
            f"{videos_dir}: {len(videos)} mp4 files, but the fMRI covers the first {n_fmri} videos by name (the "
            f"release has {TRAIN_VIDEOS} training videos among 1102 clips); download the whole video folder, or set "
            "option train_videos if your copy has fewer. Expected layout: " + LAYOUT
        )
    n_train, n_val = int(opts["n_train"]), int(opts["n_val"])
    if n_train + n_val >= n_fmri or n_train <= 0 or n_val < 0:
        raise AdapterOptionError(f"{ADAPTER}: n_train={n_train} + n_val={n_val} must leave test videos out of {n_fmri}")
    video_split = np.full(n_fmri, SPLIT_CODE["test"], dtype=np.int8)
    video_split[:n_train] = SPLIT_CODE["train"]
    video_split[n_train : n_train + n_val] = SPLIT_CODE["val"]
    return Opened(opts, subjects, videos[:n_fmri], video_split)


def prepare(root, out, *, image_size: int, options: dict) -> dict:
    """Prepare Algonauts 2021 under ``root`` into the store ``out``."""
    ds = open_dataset(root, options)
    opts, subjects, videos, video_split = ds.opts, ds.subjects, ds.videos, ds.video_split
    n_fmri = len(videos)
    # the first subject is read before the (slow) frame decoding, so a malformed download stops at once
    loaded = {subjects[0].name: subjects[0].load()}
    frames = (middle_frame(v) for v in progress(videos, "algonauts frames", unit="video"))
    report: dict[str, Any] = {"dataset": ADAPTER, "n_images": n_fmri, "track": opts["track"]}
    with StoreWriter(out, name=opts["name"], modality="fmri", source=ADAPTER, image_size=image_size) as writer:
        writer.write_images(frames, [v.name for v in videos])
        with subject_target(writer, bool(opts["bigbrain"]), name=opts["name"]) as target:
            for subj in progress(subjects, "algonauts subjects", unit="subject"):
                train, coords, rois = loaded.pop(subj.name) if subj.name in loaded else subj.load()
                n_rep = train.shape[1]
                w = target.subject(subj.name, train.shape[2])
                # trial order: video-major, repetitions of one video adjacent
                w.append(
                    train.reshape(n_fmri * n_rep, -1),
                    np.repeat(np.arange(n_fmri), n_rep),
                    np.repeat(video_split, n_rep),
                )
                w.finish(coords, rois=rois, attrs={"track": opts["track"], "repetitions": n_rep})
                del train  # one subject's responses in memory at a time
        report["subjects"] = target.reports
    return report


def check(root: Path, options: Mapping[str, Any], *, read_data: bool = True) -> list[CheckRow]:
    """One row per subject, opened as :func:`prepare` opens it; nothing written."""
    ds = open_dataset(root, dict(options))
    rows = []
    for subj in ds.subjects:
        # the pickles hold everything at once: loading one is the only way to see its shape (one at a time)
        train, _, _ = subj.load()
        codes = np.repeat(ds.video_split, train.shape[1])
        nan = int(np.isnan(train).any(axis=(0, 1)).sum()) if read_data else None
        rows.append(check_row(ADAPTER, subj.name, codes, len(ds.videos), train.shape[2], nan))
        del train
    return rows


# The terms of use the data carry (docs/sharing.md gives the source); a model card repeats them.
TERMS = "Algonauts 2021 challenge data (Cichy et al. 2021): the challenge's terms (research use; cite the challenge paper); stimuli: Moments in Time video clips (research, non-commercial use)"

FORMAT = DatasetAdapter(name=ADAPTER, defaults=DEFAULTS, prepare=prepare, check=check, terms=TERMS)
