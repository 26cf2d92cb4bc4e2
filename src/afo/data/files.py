"""Reading the files of a downloaded dataset: errors that name the file, the field and the layout expected.

Every adapter reads files as users download them; when a file is missing or malformed the error must say which
file, which field and what the published layout has there. :func:`reading` decides whether an exception raised
while parsing means "bad file" (a one-line :class:`DatasetFormatError`) or a bug (kept with its traceback).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py

from afo.errors import InputError, MissingFileError


class DatasetFormatError(InputError):
    """A downloaded dataset file exists but does not have the published layout (a field is missing or malformed)."""


class DatasetFileNotFoundError(MissingFileError):
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
    OSError,
    EOFError,
    pickle.UnpicklingError,
    UnicodeDecodeError,
    zipfile.BadZipFile,
)
# The libraries that parse downloaded files. An exception class they define (nibabel's ImageFileError, scipy's
# MatReadError, pandas' ParserError, ...) means a bad file, and so does a ValueError, KeyError, IndexError or
# TypeError that comes out of their code (h5py's KeyError for a missing dataset, numpy's ValueError for a
# truncated .npy). The same four raised by afo's own code are bugs and keep their traceback.
_READER_MODULES = (
    "h5py",
    "nibabel",
    "scipy.io",
    "pandas.io",
    "pandas._libs.parsers",
    "pandas.errors",
    "numpy.lib._npyio_impl",
    "numpy.lib._format_impl",
    "numpy.lib.npyio",
    "numpy.lib.format",
    "mne.io",
    "mne.epochs",
    "mne.utils",
    "pickle",
    "_pickle",
    "tables",
    "cifti",
    "PIL",
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
    except (DatasetFormatError, DatasetFileNotFoundError, InputError):
        raise
    except Exception as exc:  # classified below; everything not a bad file is re-raised untouched
        if not means_bad_file(exc):
            raise
        raise DatasetFormatError(
            f"{path}: could not read {what} ({type(exc).__name__}: {exc}); expected {expected}"
        ) from exc


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
