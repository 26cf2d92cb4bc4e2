"""Stimuli as datasets ship them: finding image files under a root, loading them as RGB 8-bit, video frames."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from afo.data.files import DatasetFileNotFoundError, DatasetFormatError, require_file
from afo.data.options import progress
from afo.data.store import to_rgb8

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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
    except Image.DecompressionBombError as exc:  # PIL's guard against huge images, which does not name the file
        raise DatasetFormatError(
            f"{path}: too many pixels for PIL to open safely ({exc}). Fix: save a smaller copy of the image"
        ) from exc
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
