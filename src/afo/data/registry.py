"""Which module prepares which dataset format.

Each adapter module exposes ``prepare(root, out, *, image_size, options) -> dict`` that reads the files as
users download them under ``root`` and writes a prepared store (:mod:`afo.data.store`) to ``out``,
returning a small report (counts, masked voxels). ``options`` is the dataset's config entry minus
``format`` and ``root``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from afo.errors import UserError


class UnknownFormatError(UserError, ValueError):
    """A dataset's ``format`` names no adapter."""


FORMATS: dict[str, str] = {
    "folder": "afo.data.folder",
    "nsd": "afo.data.nsd",
    "bold5000": "afo.data.bold5000",
    "things_fmri": "afo.data.things_fmri",
    "hcp_movie": "afo.data.hcp_movie",
    "algonauts2021": "afo.data.algonauts2021",
    "things_meg": "afo.data.things_meg",
    "things_eeg2": "afo.data.things_eeg2",
}


def get_adapter(fmt: str) -> Callable[..., dict]:
    """The ``prepare`` function of a dataset format."""
    if fmt not in FORMATS:
        raise UnknownFormatError(f"unknown dataset format {fmt!r}; known formats: {sorted(FORMATS)}")
    return importlib.import_module(FORMATS[fmt]).prepare
