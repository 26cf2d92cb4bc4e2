"""Stimuli as datasets ship them: finding image files under a root, loading them as RGB 8-bit, video frames."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from afo.data.files import DatasetFileNotFoundError, DatasetFormatError, require_file
from afo.data.options import progress
from afo.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# Pillow modes whose samples are 16-bit unsigned integers (PNG and TIFF grey images with 16 bits per sample).
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb8(image: Image.Image, source: str) -> Image.Image:
    """An RGB image with 8 bits per channel, scaled from the file's own sample range, or a :class:`InputError`.

    ``convert("RGB")`` alone clips wider samples to 0-255: a 16-bit image (0-65535) comes out almost white and a
    float image (0.0-1.0) black. So 16-bit samples are divided by 257 (65535 -> 255), float samples in [0, 1] are
    multiplied by 255, and what has no unambiguous 8-bit reading (32-bit integers, floats outside [0, 1], several
    frames) is refused with the file (``source``) named. Pillow itself already reads 16-bit RGB(A) PNGs as 8-bit.
    """
    frames = getattr(image, "n_frames", 1)
    # An MPO (camera JPEG) stores its primary picture first and previews or depth maps after it.
    if frames > 1 and image.format != "MPO":
        raise InputError(
            f"{source}: has {frames} frames (an animated or multi-page image); a stimulus must be one picture. "
            "Fix: save the frame the subjects saw as a single-frame image (e.g. PNG)"
        )
    mode = image.mode
    if mode in _UINT16_MODES or (mode == "I" and image.format == "PNG"):  # older Pillow reads 16-bit PNGs as "I"
        samples = np.asarray(image).astype(np.float64)
        if samples.min(initial=0) < 0 or samples.max(initial=0) > 65535:
            raise InputError(f"{source}: 16-bit samples outside 0-65535. Fix: save it as an 8- or 16-bit image")
        return Image.fromarray(np.round(samples / 257.0).astype(np.uint8)).convert("RGB")
    if mode == "F":
        samples = np.asarray(image, dtype=np.float64)
        low, high = (float(samples.min()), float(samples.max())) if samples.size else (0.0, 0.0)
        if not (np.isfinite(samples).all() and low >= 0.0 and high <= 1.0):
            raise InputError(
                f"{source}: floating-point samples span {low:g} to {high:g}; only floats in [0, 1] have an "
                "unambiguous 8-bit reading. Fix: save it as an 8-bit image (or scale it to [0, 1])"
            )
        return Image.fromarray(np.round(samples * 255.0).astype(np.uint8)).convert("RGB")
    if mode.startswith("I"):
        raise InputError(
            f"{source}: {mode!r} samples (32-bit or signed integers) have no unambiguous 8-bit reading. "
            "Fix: save it as an 8- or 16-bit unsigned image"
        )
    return image.convert("RGB")


def resize_image(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Resize a stimulus to ``size`` x ``size`` RGB uint8 (wide or float samples scaled by :func:`to_rgb8`).

    The whole stimulus is kept (no crop): a non-square image is squashed, because a
    crop would drop the periphery that retinotopic voxels look at.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputError(f"image array must be uint8, got {image.dtype}")
        image = Image.fromarray(image)
    image = to_rgb8(image, getattr(image, "filename", "") or "a stimulus image")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


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
    """An RGB 8-bit PIL image, wide or float samples scaled to 0-255 (:func:`to_rgb8`).

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
