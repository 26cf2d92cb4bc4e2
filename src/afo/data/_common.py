"""Helpers shared by the dataset adapters: option checking, clear errors, images, video frames, splits.

Every adapter reads files as users download them; when a file is missing or malformed the error must name
the file, the field and the layout that was expected, so these helpers build such messages in one place.
"""

from __future__ import annotations

import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from afo.data.store import SPLIT_CODE, StoreError, to_rgb8
from afo.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# ----------------------------------------------------------------------------------------------------------------
# errors


class DatasetFormatError(StoreError):
    """A downloaded dataset file exists but does not have the published layout (a field is missing or malformed)."""


class DatasetFileNotFoundError(UserError, FileNotFoundError):
    """A file the published layout promises is not under the dataset root."""


def require_file(path: str | Path, what: str, layout: str) -> Path:
    """``path`` if it is a file, else a :class:`DatasetFileNotFoundError` that says what was expected where."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFileNotFoundError(f"{path}: {what} not found. Expected layout: {layout}")
    return path


def format_error(path: str | Path, field: str, problem: str, expected: str) -> DatasetFormatError:
    """An error that names the file, the field, what is wrong and what the published layout has there."""
    return DatasetFormatError(f"{path}: field {field!r} {problem}; expected {expected}")


# Exceptions that mean "this file is not in the expected format" whoever raises them: the OS could not read it,
# it ended early, or its bytes are not a pickle / text / zip archive.
_BAD_FILE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, pickle.UnpicklingError, UnicodeDecodeError, zipfile.BadZipFile,
)
# The libraries that parse downloaded files. An exception class they define (nibabel's ImageFileError, scipy's
# MatReadError, pandas' ParserError, ...) means a bad file, and so does a ValueError, KeyError, IndexError or
# TypeError that comes out of their code (h5py's KeyError for a missing dataset, numpy's ValueError for a
# truncated .npy). The same four raised by afo's own code are bugs and keep their traceback.
_READER_MODULES = (
    "h5py", "nibabel", "scipy.io", "pandas.io", "pandas._libs.parsers", "pandas.errors", "numpy.lib._npyio_impl",
    "numpy.lib._format_impl", "numpy.lib.npyio", "numpy.lib.format", "mne.io", "mne.epochs", "mne.utils",
    "pickle", "_pickle", "tables", "cifti", "PIL",
)
_PARSER_LOOKUP_ERRORS = (ValueError, KeyError, IndexError, TypeError)


def _in(module: str, packages: Sequence[str]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in packages)


def _from_reader(module: str) -> bool:
    return _in(module, _READER_MODULES)


def _traceback_modules(exc: BaseException) -> list[str]:
    """Module name of every frame ``exc`` passed through, outermost first."""
    modules = []
    tb = exc.__traceback__
    while tb is not None:
        modules.append(str(tb.tb_frame.f_globals.get("__name__", "")))
        tb = tb.tb_next
    return modules


def raised_inside(exc: BaseException, packages: Sequence[str]) -> bool:
    """Whether the innermost frame of ``exc`` lies in one of ``packages`` (e.g. ("mne",)): the library raised it."""
    modules = _traceback_modules(exc)
    return bool(modules) and _in(modules[-1], packages)


def means_bad_file(exc: BaseException) -> bool:
    """Whether ``exc``, raised while reading a file, says the file is unreadable or not in the expected format.

    True for OS-level read failures, truncation and undecodable bytes; for exception classes defined by the
    file-reading libraries; and for ValueError/KeyError/IndexError/TypeError that passed through one of those
    libraries and was not raised by afo itself (the innermost frame). Anything else is a bug.
    """
    if isinstance(exc, _BAD_FILE_ERRORS) or _from_reader(type(exc).__module__):
        return True
    if not isinstance(exc, _PARSER_LOOKUP_ERRORS):
        return False
    return not raised_inside(exc, ("afo",)) and any(_from_reader(m) for m in _traceback_modules(exc))


@contextmanager
def reading(path: str | Path, what: str, expected: str) -> Iterator[None]:
    """Turn a failure of a file-reading library (h5py, nibabel, pandas, scipy, pickle, numpy's .npy reader) into
    a :class:`DatasetFormatError` that names the file, what it should hold and the layout expected.

    Only failures that mean the file is unreadable or not in the expected format are converted
    (:func:`means_bad_file`); our own errors pass through unchanged, and anything else (a bug) keeps its type
    and traceback.
    """
    try:
        yield
    except (DatasetFormatError, DatasetFileNotFoundError, StoreError):
        raise
    except Exception as exc:  # classified below; everything not a bad file is re-raised untouched
        if not means_bad_file(exc):
            raise
        raise DatasetFormatError(
            f"{path}: could not read {what} ({type(exc).__name__}: {exc}); expected {expected}"
        ) from exc


# ----------------------------------------------------------------------------------------------------------------
# options


class AdapterOptionError(UserError, ValueError):
    """A dataset's config entry has an unknown option or a value the adapter cannot use (the fix is in the config)."""


def resolve_options(adapter: str, options: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by the config entry; an unknown key is an error that lists the valid ones."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise AdapterOptionError(
            f"{adapter}: unknown option(s) {unknown}; valid options are {sorted(defaults)} "
            f"(see docs/datasets.md)"
        )
    return {**defaults, **options}


def check_choice(adapter: str, key: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else an :class:`AdapterOptionError` listing them."""
    if value not in choices:
        raise AdapterOptionError(f"{adapter}: option {key}={value!r} is not one of {list(choices)}")
    return value


def as_list(value: Any) -> list | None:
    """None stays None; a scalar becomes a one-element list."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def progress(iterable: Iterable, desc: str, total: int | None = None, unit: str = "it") -> Iterable:
    """Progress bar on stderr (long loops: sessions, runs, videos)."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, mininterval=1.0, leave=False)


def warn(message: str) -> None:
    """A user-facing warning on stderr (something was substituted or skipped, never silently)."""
    warnings.warn(message, UserWarning, stacklevel=2)


# ----------------------------------------------------------------------------------------------------------------
# files


def open_h5(path: str | Path, what: str, expected: str) -> h5py.File:
    """Open an HDF5 file read-only, with an error that names the file if it is not HDF5."""
    path = require_file(path, what, expected)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetFormatError(f"{path}: {what} is not a readable HDF5 file ({exc}); expected {expected}") from exc


def h5_dataset(f: h5py.File, key: str, expected: str) -> h5py.Dataset:
    if key not in f or not isinstance(f[key], h5py.Dataset):
        raise format_error(f.filename, key, f"is missing (keys: {sorted(f.keys())})", expected)
    return f[key]


def load_trusted_pickle(path: str | Path, what: str, expected: str) -> Any:
    """Unpickle a file the user pointed the config at (latin1, as Python-2 era pickles need).

    A pickle can run code when loaded: adapters only call this on files under the root the user named,
    and docs/datasets.md tells users to name only files they trust.
    """
    path = require_file(path, what, expected)
    with reading(path, what, expected), open(path, "rb") as fh:
        try:
            return pickle.Unpickler(fh, encoding="latin1").load()
        except (ImportError, AttributeError) as exc:  # only the unpickler runs here: it names a class we lack
            raise DatasetFormatError(
                f"{path}: {what} is a pickle of a class this environment cannot import ({exc}); expected {expected}"
            ) from exc


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a text file."""
    return [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]


def find_first(candidates: Iterable[Path]) -> Path | None:
    for path in candidates:
        if path.exists():
            return path
    return None


def index_images(folder: Path, desc: str = "indexing images") -> dict[str, Path]:
    """Map file name -> path for every image under ``folder`` (first one wins on duplicate names)."""
    found: dict[str, Path] = {}
    for path in progress(sorted(folder.rglob("*")), desc, unit="file"):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.name not in found:
            found[path.name] = path
    return found


def find_images(folder: Path, relative: Mapping[str, str | Path]) -> dict[str, Path]:
    """Key -> image file for each ``relative`` path: ``folder / path`` when it exists, else the file of that name
    anywhere below ``folder`` (downloads flatten or nest folders differently). Keys not found are left out."""
    found, index = {}, None
    for key, rel in relative.items():
        direct = folder / rel
        if direct.is_file():
            found[key] = direct
            continue
        if index is None:
            index = index_images(folder)
        if Path(rel).name in index:
            found[key] = index[Path(rel).name]
    return found


# ----------------------------------------------------------------------------------------------------------------
# images and video


def load_image(path: str | Path) -> Image.Image:
    """An RGB 8-bit PIL image, wide or float samples scaled to 0-255 (:func:`afo.data.store.to_rgb8`).

    A missing file, a file PIL cannot read, a multi-frame image or one without an unambiguous 8-bit reading is
    an error that names it.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            return to_rgb8(img, str(path))
    except FileNotFoundError as exc:
        raise DatasetFileNotFoundError(f"{path}: stimulus image not found") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetFormatError(
            f"{path}: not an image PIL can read ({exc}). Fix: replace or convert the file (PNG or JPEG)"
        ) from exc


def lazy_images(paths: Sequence[Path], desc: str = "images") -> Iterator[Image.Image]:
    """Load images one at a time (the store resizes each before the next is read: bounded memory)."""
    for path in progress(paths, desc, total=len(paths), unit="img"):
        yield load_image(path)


def _open_video(path: Path):
    import av  # imported here: only the video datasets need PyAV

    require_file(path, "video file", "an mp4 (or any container FFmpeg reads)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:  # every PyAV error derives from FFmpegError
        raise DatasetFormatError(f"{path}: not a video PyAV can open ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise DatasetFormatError(f"{path}: has no video stream")
    return container


def _av_errors() -> tuple[type[BaseException], ...]:
    """The exceptions PyAV raises for a stream it cannot decode (av.error.*, all FFmpegError)."""
    import av.error

    return (av.error.FFmpegError,)


def video_duration(path: str | Path) -> float:
    """Duration in seconds from the container (or stream) header, without decoding."""
    path = Path(path)
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / 1_000_000  # microseconds (av.time_base)
        if stream.frames and stream.average_rate:
            return stream.frames / float(stream.average_rate)
    finally:
        container.close()
    raise DatasetFormatError(f"{path}: the video header has no duration")


def video_frames_at(path: str | Path, times: Sequence[float]) -> Iterator[np.ndarray]:
    """Yield the frame on screen at each time in ``times`` (seconds, ascending), as uint8 [H, W, 3].

    Frames are decoded sequentially (no seeking: exact and robust for any codec) and only the wanted ones are
    converted, so memory holds one frame at a time. A time past the last frame gets the last frame.
    """
    path = Path(path)
    times = list(times)
    if any(b < a for a, b in zip(times, times[1:])):
        raise ValueError("video_frames_at needs ascending times")
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        i = 0
        previous = None
        for n, frame in enumerate(container.decode(stream)):
            # a frame without a timestamp is placed by its index and the stream's frame rate
            t = frame.time if frame.time is not None else (n / rate if rate else 0.0)
            while i < len(times) and t > times[i] + 1e-9:
                # the previous frame was on screen at times[i]; a time before the first frame gets the first frame
                yield (previous if previous is not None else frame).to_ndarray(format="rgb24")
                i += 1
            if i >= len(times):
                break
            previous = frame
        while i < len(times):
            if previous is None:
                raise DatasetFormatError(f"{path}: no decodable video frames")
            yield previous.to_ndarray(format="rgb24")
            i += 1
    except DatasetFormatError:
        raise
    except _av_errors() as exc:  # FFmpeg's verdict on the stream; a bug in the loop above keeps its traceback
        raise DatasetFormatError(f"{path}: video decoding failed ({exc})") from exc
    finally:
        container.close()


def middle_frame(path: str | Path) -> np.ndarray:
    """The middle frame of a (short) video, uint8 [H, W, 3]: frame number n // 2 of its n frames."""
    path = Path(path)
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        frames = [frame for frame in container.decode(stream)]  # 3-s clips: ~90 small frames
    except _av_errors() as exc:
        raise DatasetFormatError(f"{path}: video decoding failed ({exc})") from exc
    finally:
        container.close()
    if not frames:
        raise DatasetFormatError(f"{path}: no decodable video frames")
    return frames[len(frames) // 2].to_ndarray(format="rgb24")


# ----------------------------------------------------------------------------------------------------------------
# responses


def zscore_rows(block: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """z-score each column of ``block`` [n_trials, n_voxels] over trials, separately within each group
    (e.g. session) of rows. A column that is constant (or all NaN) in a group becomes NaN there: the store
    then treats those trials as missing for that voxel instead of inventing values.
    """
    out = np.empty(block.shape, dtype=np.float32)
    if groups is None:
        groups = np.zeros(block.shape[0], dtype=np.int64)
    for g in np.unique(groups):
        rows = groups == g
        x = block[rows].astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(x, axis=0)
            sd = np.nanstd(x, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rows] = (x - mean) / np.where(sd > 0, sd, np.nan)
    return out


def volume_scale(dtype: np.dtype, scale: Any, what: str) -> float:
    """Factor that turns stored betas into percent signal change.

    'auto': integer betas (NSD's int16 convention) are divided by 300; float betas are already PSC.
    """
    if scale == "auto":
        return 1.0 / 300.0 if np.issubdtype(dtype, np.integer) else 1.0
    try:
        return float(scale)
    except (TypeError, ValueError) as exc:
        raise AdapterOptionError(f"{what}: option scale must be 'auto' or a number, got {scale!r}") from exc


# ----------------------------------------------------------------------------------------------------------------
# splits


def split_images(
    images: Sequence[Any], test: Iterable[Any], val_fraction: float, seed: int, train_fraction: float | None = None
) -> dict[Any, int]:
    """Split code per image: the dataset's own test images go to test, the rest is shuffled with ``seed``
    and ``val_fraction`` of it goes to val. Deterministic given the image list (order does not matter).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise AdapterOptionError(f"option val_fraction must be in [0, 1), got {val_fraction}")
    test = set(test)
    unique = sorted(set(images), key=str)
    rest = [im for im in unique if im not in test]
    order = np.random.default_rng(seed).permutation(len(rest))
    n_val = int(round(val_fraction * len(rest)))
    code = {im: SPLIT_CODE["test"] for im in unique if im in test}
    for rank, idx in enumerate(order):
        code[rest[idx]] = SPLIT_CODE["val"] if rank < n_val else SPLIT_CODE["train"]
    return code


# ----------------------------------------------------------------------------------------------------------------
# sensor coordinates (MEG / EEG): a voxel is a sensor x time point


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through ``points`` [n, 3]: (centre [3], radius)."""
    a = np.c_[2 * points, np.ones(len(points))]
    b = (points**2).sum(1)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    centre = sol[:3]
    radius = float(np.sqrt(max(sol[3] + centre @ centre, 1e-12)))
    return centre, radius


def flatten_sensors(positions_mm: np.ndarray) -> np.ndarray:
    """Azimuthal-equidistant projection of sensor positions [n, 3] (mm) onto a plane [n, 2] (mm).

    The sensors are taken to lie on a sphere (fitted); each is mapped to the plane at its great-circle
    distance from the sphere's top along its azimuth, as EEG/MEG topographic maps do. Distances along the
    scalp/helmet are kept (exactly from the vertex, closely elsewhere), so neighbouring sensors stay neighbours.
    With fewer than 4 sensors (no sphere to fit) the x, y positions are returned as they are.
    """
    positions_mm = np.asarray(positions_mm, dtype=np.float64)
    if len(positions_mm) < 4 or np.linalg.matrix_rank(positions_mm - positions_mm.mean(0)) < 3:
        return positions_mm[:, :2].copy()
    centre, radius = fit_sphere(positions_mm)
    d = positions_mm - centre
    r = np.linalg.norm(d, axis=1)
    theta = np.arccos(np.clip(d[:, 2] / np.where(r > 0, r, 1), -1, 1))  # angle from +z (the top of the head)
    phi = np.arctan2(d[:, 1], d[:, 0])
    arc = radius * theta
    return np.c_[arc * np.cos(phi), arc * np.sin(phi)]


def sensor_time_coords(positions_mm: np.ndarray, times_s: np.ndarray, mm_per_s: float) -> np.ndarray:
    """Coordinates [n_sensors * n_times, 3] of sensor x time voxels (sensor-major: voxel = s * n_times + t).

    x, y: the sensor's flattened position (mm, :func:`flatten_sensors`); z: time x ``mm_per_s``. Neighbouring
    time points of one sensor are therefore neighbours along z (10 ms = 1 mm at the default 100 mm/s, well
    below the ~20-40 mm between sensors), and the sensors keep their scalp layout in every time slice.
    """
    xy = flatten_sensors(positions_mm)
    n_s, n_t = len(xy), len(times_s)
    coords = np.empty((n_s, n_t, 3), dtype=np.float32)
    coords[:, :, :2] = xy[:, None, :]
    coords[:, :, 2] = np.asarray(times_s, dtype=np.float64)[None, :] * mm_per_s
    return coords.reshape(n_s * n_t, 3)


def time_window(times: np.ndarray, tmin: float | None, tmax: float | None, decim: int, what: str) -> np.ndarray:
    """Indices [n_bins, decim] of the samples in [tmin, tmax], grouped into bins of ``decim`` samples
    (a trailing partial bin is dropped). The bins are averaged: a boxcar low-pass before subsampling, so
    decimating does not alias high frequencies into the kept samples.
    """
    if int(decim) != decim or decim < 1:
        raise AdapterOptionError(f"{what}: option decim must be a positive integer, got {decim!r}")
    decim = int(decim)
    times = np.asarray(times, dtype=np.float64)
    lo = -np.inf if tmin is None else float(tmin) - 1e-9
    hi = np.inf if tmax is None else float(tmax) + 1e-9
    idx = np.flatnonzero((times >= lo) & (times <= hi))
    n_bins = idx.size // decim
    if n_bins == 0:
        raise AdapterOptionError(
            f"{what}: the time window tmin={tmin}, tmax={tmax} with decim={decim} keeps no sample "
            f"(data span {times[0]:.3f} to {times[-1]:.3f} s)"
        )
    return idx[: n_bins * decim].reshape(n_bins, decim)


def apply_window(data: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """data [..., n_times] -> [..., n_bins]: the mean of each bin of samples."""
    return data[..., bins].mean(axis=-1)


def parse_subject_number(value: Any, pattern: str, what: str) -> int:
    """1 from 1, '1', 'sub-01', 'subj01', 'P1', 'CSI1'..."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    match = re.search(r"(\d+)\s*$", str(value))
    if not match:
        raise AdapterOptionError(f"{what}: cannot read a subject number from {value!r}; use e.g. {pattern}")
    return int(match.group(1))
