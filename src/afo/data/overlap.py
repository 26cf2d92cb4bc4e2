"""Images shared between datasets: found by identity or by their pixels, written to ``results/data/overlap.csv``.

Why: NSD and BOLD5000 both show COCO images; THINGS-fMRI, THINGS-MEG and THINGS-EEG2 draw on the THINGS images.
A test image that another training dataset trained on is no longer a test of generalisation, so evaluation and
probing leave such images out (:func:`left_out_images`; config ``overlap.exclude``).

Two ways to find a shared image, between every pair of datasets (never within one dataset):

- **identity**: the prepared store's ``/image_sources`` (written by the adapters from what the dataset itself
  says about each image: :func:`coco_source` for NSD's ``cocoId`` and BOLD5000's ``COCO_train2014_<id>.jpg``
  names, :func:`things_source` for the THINGS file names of THINGS-fMRI, THINGS-MEG and THINGS-EEG2). Equal,
  non-empty sources are the same picture however each dataset cropped or re-encoded it (NSD shows square crops of
  COCO images, which no pixel comparison of the whole image could match).
- **perceptual hash** for every other pair: a 64-bit DCT hash (pHash: grey image box-averaged to 32 x 32, the
  8 x 8 lowest 2-D DCT frequencies without the mean, each bit = above the median) finds candidates within
  ``max_distance`` differing bits; a candidate is kept only when the two 16 x 16 grey thumbnails correlate with
  Pearson r >= ``min_correlation``, at the best of small crop windows (up to MAX_CROP per side, at 3 sizes and
  3 x 3 offsets, tried on either image: :func:`aligned_correlation`). The hash alone cannot tell a copy from a
  different view of the same scene or from a look-alike synthetic stimulus (both keep the coarse layout); the
  aligned thumbnail correlation can: a crop of a few percent lines up with one of the windows, while content
  shifted by a tenth of the image or a different picture does not. Measured (benchmarks/overlap_hash.py,
  docs/datasets.md): copies resized, re-encoded or cropped 2-5 % per side reach r >= 0.94 (mostly >= 0.97),
  the same scene shifted by 10 % and distinct synthetic stimuli with the nearest hashes stay at r <= 0.93.
  Near-flat images (thumbnail standard deviation below 2 grey levels: blank or fade frames) are never matched by
  pixels, since all of them look alike. The hashes are computed from the stores' images (at
  ``prepare.image_size``, squashed to a square as training sees them).

``overlap.csv`` (one row per pair of images in two datasets; header only when there is none)::

    dataset_a, image_a, name_a, split_a, dataset_b, image_b, name_b, split_b, method, source, distance, correlation

``image_*`` = row of the dataset's store, ``name_*`` = its ``/image_names`` entry, ``split_*`` = the split(s) the
image is in over the dataset's subjects (``train``, ``val``, ``test``, joined by ``+`` when subjects differ; ''
when no subject saw it); ``method`` = ``source`` (identity) or ``hash``; ``source`` = the shared source name
(identity rows); ``distance`` = Hamming distance of the hashes (0-64); ``correlation`` = aligned thumbnail r.
``dataset_a`` < ``dataset_b`` alphabetically.

A test image is *left out* of a dataset's scores when it is paired with an image in the train or val split of
a training dataset (val counts: it chose the checkpoints); :func:`left_out_images`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.fft import dctn

from afo.data.store import SPLITS, PreparedStore

COLUMNS = (
    "dataset_a",
    "image_a",
    "name_a",
    "split_a",
    "dataset_b",
    "image_b",
    "name_b",
    "split_b",
    "method",
    "source",
    "distance",
    "correlation",
)
HASH_SIZE = 32  # grey image side the DCT runs on
HASH_LOW = 8  # 8 x 8 lowest frequencies -> 64 bits
THUMB = 16  # thumbnail side of the verification
FLAT_STD = 2.0  # grey levels: below this a thumbnail is "flat" and never matched by pixels
MAX_CROP = 0.06  # per side: the largest crop the verification lines up (windows of 1 - 2 * MAX_CROP)
DEFAULT_MAX_DISTANCE = 16
DEFAULT_MIN_CORRELATION = 0.95
_CHUNK = 512  # images fingerprinted at once; rows of a distance block

# COCO file names: COCO_train2014_000000000036.jpg (BOLD5000, the COCO 2014 release), 000000000036.jpg (2017).
_COCO_RE = re.compile(r"^(?:COCO_(?:train|val|test)20\d\d_)?0*(\d+)$", re.IGNORECASE)
_IMAGENET_RE = re.compile(r"^(n\d{8}_\d+)$", re.IGNORECASE)


def coco_source(value: str | int) -> str:
    """``coco:<id>`` of a COCO image id (int or digits) or COCO file name (``COCO_train2014_000000000036.jpg``), else ''."""
    if isinstance(value, (int, np.integer)):
        return f"coco:{int(value)}"
    match = _COCO_RE.match(Path(str(value)).stem)
    return f"coco:{int(match.group(1))}" if match else ""


def things_source(path: str) -> str:
    """``things:<file stem>`` of a THINGS image (``.../aardvark/aardvark_01b.jpg`` -> ``things:aardvark_01b``).

    Every THINGS image has a unique file name over the whole database (``<concept>_<nn><letter>``), the same in
    the THINGS-fMRI, THINGS-MEG and THINGS-EEG2 releases, so the stem names it.
    """
    return f"things:{Path(str(path)).stem.lower()}"


def bold5000_source(file_name: str) -> str:
    """Source of a BOLD5000 stimulus by its file name: COCO and ImageNet images are named by their origin's id;
    the scene images (SUN) are not shared with the other datasets afo reads, so they get ''."""
    stem = Path(str(file_name)).stem
    if stem.upper().startswith("COCO_"):
        return coco_source(file_name)
    match = _IMAGENET_RE.match(stem)
    return f"imagenet:{match.group(1)}" if match else ""


# ---------------------------------------------------------------------------------------------------------------
# fingerprints


def _grey(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float64 [size, size] grey (ITU-R 601 luma), box-averaged (every pixel counts once)."""
    return np.asarray(
        Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("L").resize((size, size), Image.Resampling.BOX),
        dtype=np.float64,
    )


def _window_operators(max_crop: float, steps: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Linear resampling operators (R_y, R_x), each [W, THUMB, HASH_SIZE], of every crop window searched.

    Window w of a 32 x 32 grey image G is ``R_y[w] @ G @ R_x[w].T`` (16 x 16, linear interpolation at the
    thumbnail's pixel centres). Windows: the whole image, and sub-windows of relative side 1 - 2c for ``steps``
    crop fractions c up to ``max_crop`` per side, each at ``steps`` x ``steps`` offsets from one corner to the
    other (an uneven crop shifts as well as scales the content).
    """

    def axis_operator(start: float, side: float) -> np.ndarray:
        centres = start + (np.arange(THUMB) + 0.5) / THUMB * side  # in [0, 1] of the source image
        pos = np.clip(centres * HASH_SIZE - 0.5, 0, HASH_SIZE - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, HASH_SIZE - 1)
        op = np.zeros((THUMB, HASH_SIZE))
        op[np.arange(THUMB), lo] += 1 - (pos - lo)
        op[np.arange(THUMB), hi] += pos - lo
        return op

    windows = [(0.0, 0.0, 1.0)]
    for crop in np.linspace(0, max_crop, steps + 1)[1:]:
        side = 1 - 2 * crop
        for y in np.linspace(0, 1 - side, steps):
            for x in np.linspace(0, 1 - side, steps):
                windows.append((y, x, side))
    ry = np.stack([axis_operator(y, side) for y, _, side in windows])
    rx = np.stack([axis_operator(x, side) for _, x, side in windows])
    return ry, rx


_OPERATORS = _window_operators(MAX_CROP)
# The whole image at thumbnail size: 2 x 2 box average of the 32 x 32 grey image.
_WHOLE = np.kron(np.eye(THUMB), np.full((1, HASH_SIZE // THUMB), 1.0 / (HASH_SIZE // THUMB)))


def _standardise(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails [..., THUMB, THUMB] -> [..., THUMB * THUMB], mean 0 and norm 1 (a dot product is Pearson r)."""
    flat = thumbs.reshape(*thumbs.shape[:-2], -1)
    flat = flat - flat.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(flat, axis=-1, keepdims=True)
    return flat / np.where(norm > 0, norm, 1.0)


def aligned_correlation(grey_a: np.ndarray, grey_b: np.ndarray) -> np.ndarray:
    """Best thumbnail Pearson r of pairs of grey 32 x 32 images [k, 32, 32], over crop windows of either image.

    One image of each pair is taken whole; the other is cut by every window of ``_OPERATORS`` (a copy cropped
    by a few percent per side lines up with one of them), and the best r over both directions is returned [k].
    """
    ry, rx = _OPERATORS
    out = np.full(len(grey_a), -1.0)
    for first, second in ((grey_a, grey_b), (grey_b, grey_a)):
        whole = _standardise(_WHOLE @ first @ _WHOLE.T)  # [k, 256]
        windows = _standardise(ry @ second[:, None] @ rx.transpose(0, 2, 1))  # [k, W, 256]
        out = np.maximum(out, np.einsum("kp,kwp->kw", whole, windows).max(axis=1))
    return out


def fingerprints(images: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash uint64 [n], grey float32 [n, 32, 32], flat bool [n]) of RGB uint8 images [H, W, 3].

    The hash is pHash (see the module docstring); ``grey`` the 32 x 32 box-averaged grey image the hash and the
    verification use; ``flat``: its 16 x 16 thumbnail varies by less than FLAT_STD grey levels.
    """
    hashes, greys, flat = [], [], []
    weights = (np.uint64(1) << np.arange(HASH_LOW * HASH_LOW - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)
    for image in images:
        grey = _grey(image, HASH_SIZE)
        low = dctn(grey, type=2, norm="ortho")[:HASH_LOW, :HASH_LOW].ravel()
        bits = (low > np.median(low[1:])).astype(np.uint64)  # the mean (DC) says nothing about the layout
        bits[0] = 0
        hashes.append(np.bitwise_or.reduce(bits * weights))
        greys.append(grey.astype(np.float32))
        flat.append(float((_WHOLE @ grey @ _WHOLE.T).std()) < FLAT_STD)
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros((0, HASH_SIZE, HASH_SIZE), np.float32), np.zeros(0, bool)
    return np.asarray(hashes, dtype=np.uint64), np.stack(greys), np.asarray(flat, dtype=bool)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between every hash of ``a`` [n] and of ``b`` [m] (uint64): uint8 [n, m]."""
    x = np.bitwise_xor(np.asarray(a, np.uint64)[:, None], np.asarray(b, np.uint64)[None, :])
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: a popcount instruction
        return np.bitwise_count(x).astype(np.uint8)
    return _POPCOUNT[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# datasets


@dataclass
class DatasetImages:
    """What the overlap step knows of one dataset's images (all arrays [n_images])."""

    name: str
    names: list[str]
    sources: list[str]
    splits: list[str]
    hashes: np.ndarray
    grey: np.ndarray  # float32 [n_images, 32, 32]
    flat: np.ndarray


def image_splits(store: PreparedStore) -> list[str]:
    """Per image of the store: the split(s) it is in over the subjects (``train``, ``test+train``...; '' unseen)."""
    seen = np.zeros((store.n_images, len(SPLITS)), dtype=bool)
    for subject in store.subjects:
        seen[store.trial_image(subject), store.trial_split(subject)] = True
    return ["+".join(SPLITS[c] for c in np.flatnonzero(row)) for row in seen]


def read_dataset(name: str, path: str | Path) -> DatasetImages:
    """Fingerprint every image of a prepared store, reading it in chunks (bounded memory)."""
    with PreparedStore(path) as store:
        parts = [fingerprints(store.images(slice(s, s + _CHUNK))) for s in range(0, store.n_images, _CHUNK)]
        hashes, grey, flat = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return DatasetImages(name, store.image_names(), store.image_sources(), image_splits(store), hashes, grey, flat)


def _pairs(a: DatasetImages, b: DatasetImages, max_distance: int, min_correlation: float) -> list[dict]:
    """Every pair of images of ``a`` and ``b`` shared by identity or by pixels."""
    found: dict[tuple[int, int], str] = {}
    by_source: dict[str, list[int]] = {}
    for j, src in enumerate(b.sources):
        if src:
            by_source.setdefault(src, []).append(j)
    for i, src in enumerate(a.sources):
        for j in by_source.get(src, []) if src else []:
            found[(i, j)] = src
    candidates = []
    usable_b = np.flatnonzero(~b.flat)
    for start in range(0, len(a.names), _CHUNK):
        rows = np.arange(start, min(start + _CHUNK, len(a.names)))
        rows = rows[~a.flat[rows]]
        if rows.size and usable_b.size:
            ri, ci = np.nonzero(hamming(a.hashes[rows], b.hashes[usable_b]) <= max_distance)
            candidates.append(np.stack([rows[ri], usable_b[ci]], axis=1))
    pairs = np.concatenate(candidates) if candidates else np.zeros((0, 2), dtype=np.int64)
    pairs = np.unique(np.concatenate([pairs, np.asarray(list(found), dtype=np.int64).reshape(-1, 2)]), axis=0)
    out = []
    for start in range(0, len(pairs), _CHUNK):
        block = pairs[start : start + _CHUNK]
        r = aligned_correlation(a.grey[block[:, 0]], b.grey[block[:, 1]])
        d = hamming(a.hashes[block[:, 0]], b.hashes[block[:, 1]]).diagonal() if len(block) else []
        for (i, j), corr, dist in zip(block.tolist(), r, d):
            source = found.get((i, j), "")
            if not source and corr < min_correlation:
                continue
            out.append(
                {
                    "dataset_a": a.name,
                    "image_a": i,
                    "name_a": a.names[i],
                    "split_a": a.splits[i],
                    "dataset_b": b.name,
                    "image_b": j,
                    "name_b": b.names[j],
                    "split_b": b.splits[j],
                    "method": "source" if source else "hash",
                    "source": source,
                    "distance": int(dist),
                    "correlation": round(float(corr), 4),
                }
            )
    return out


def find_overlap(
    stores: Mapping[str, str | Path],
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
) -> pd.DataFrame:
    """overlap.csv's table (see the module docstring) over every pair of the datasets ``stores`` (name -> store)."""
    datasets = [read_dataset(name, path) for name, path in sorted(stores.items())]
    rows = []
    for k, a in enumerate(datasets):
        for b in datasets[k + 1 :]:
            rows += _pairs(a, b, int(max_distance), float(min_correlation))
    return pd.DataFrame(rows, columns=list(COLUMNS))


_TEXT_COLUMNS = ("dataset_a", "name_a", "split_a", "dataset_b", "name_b", "split_b", "method", "source")


def read_overlap(path: str | Path) -> pd.DataFrame:
    """An overlap.csv, its names and splits as strings ('' for empty; an image named 007 stays 007)."""
    return pd.read_csv(path, dtype={c: str for c in _TEXT_COLUMNS}, keep_default_na=False)


def _trained_on(split: str) -> bool:
    return bool({"train", "val"} & set(split.split("+")))


def left_out_images(overlap: pd.DataFrame | str | Path, dataset: str, train_datasets: Sequence[str]) -> np.ndarray:
    """Sorted store rows of ``dataset``'s test images that a training dataset (other than itself) trained on.

    Only test images are left out: a training image shared with another dataset is what training on many
    datasets means. "Trained on" = in that dataset's train or val split (val chose the checkpoints).
    """
    table = read_overlap(overlap) if not isinstance(overlap, pd.DataFrame) else overlap
    rows: set[int] = set()
    train = set(train_datasets) - {dataset}
    for mine, other in (("a", "b"), ("b", "a")):
        hit = table[(table[f"dataset_{mine}"] == dataset) & table[f"dataset_{other}"].isin(train)]
        keep = [
            _trained_on(theirs) and "test" in own.split("+")
            for theirs, own in zip(hit[f"split_{other}"].tolist(), hit[f"split_{mine}"].tolist())
        ]
        hit = hit[np.asarray(keep, dtype=bool)]
        rows |= set(hit[f"image_{mine}"].astype(int).tolist())
    return np.asarray(sorted(rows), dtype=np.int64)


def overlap_summary(
    overlap: pd.DataFrame, stores: Mapping[str, str | Path], train_datasets: Sequence[str], exclude: bool
) -> pd.DataFrame:
    """Per dataset: images shared with each other dataset, its test images, and how many are left out.

    Columns: dataset, shared_with (``other: n images`` ...), n_test_images, n_test_trained_elsewhere (test images a
    training dataset trained on), n_test_left_out (the same when ``exclude``, else 0).
    """
    out = []
    for name, path in sorted(stores.items()):
        with PreparedStore(path) as store:
            test = {i for i, s in enumerate(image_splits(store)) if "test" in s.split("+")}
        shared = []
        for other in sorted(set(stores) - {name}):
            pair = overlap[
                ((overlap["dataset_a"] == name) & (overlap["dataset_b"] == other))
                | ((overlap["dataset_b"] == name) & (overlap["dataset_a"] == other))
            ]
            if len(pair):
                shared.append(f"{other}: {len(pair)}")
        trained = left_out_images(overlap, name, train_datasets).size
        out.append(
            {
                "dataset": name,
                "shared_with": "; ".join(shared),
                "n_test_images": len(test),
                "n_test_trained_elsewhere": trained,
                "n_test_left_out": trained if exclude else 0,
            }
        )
    return pd.DataFrame(out)


def left_out_by_dataset(
    overlap_files: Sequence[str | Path], datasets: Iterable[str], train_datasets: Sequence[str]
) -> dict[str, np.ndarray]:
    """:func:`left_out_images` of every dataset from the overlap.csv among ``overlap_files`` (a rule's input list:
    empty when exclusion is off, and then nothing is left out)."""
    if not overlap_files:
        return {}
    table = read_overlap(overlap_files[0])
    return {name: left_out_images(table, name, train_datasets) for name in datasets}
