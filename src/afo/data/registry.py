"""Which module adapts which dataset format: the config's ``format`` -> its :class:`DatasetAdapter` record.

Every adapter fills the contract of :mod:`afo.data.adapter` (``prepare``, ``check``, the options it accepts)
in one module, which ends with ``FORMAT = DatasetAdapter(...)``. Modules are imported on first use: some
import heavy readers (nibabel, mne) that other formats do not need.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afo.data.adapter import DatasetAdapter
from afo.errors import ConfigError


class UnknownFormatError(ConfigError):
    """A dataset's ``format`` names no adapter."""


FORMATS: dict[str, str] = {
    "folder": "afo.data.folder",
    "synthetic": "afo.data.synthetic",
    "nsd": "afo.data.nsd",
    "bold5000": "afo.data.bold5000",
    "things_fmri": "afo.data.things_fmri",
    "hcp_movie": "afo.data.hcp_movie",
    "algonauts2021": "afo.data.algonauts2021",
    "things_meg": "afo.data.things_meg",
    "things_eeg2": "afo.data.things_eeg2",
    "bids_glmsingle": "afo.data.bids_glmsingle",
    "nsd_synthetic": "afo.data.nsd_synthetic",
    "algonauts2023": "afo.data.algonauts2023",
}


def get_adapter(fmt: str) -> DatasetAdapter:
    """The adapter of a dataset format."""
    if fmt not in FORMATS:
        raise UnknownFormatError(f"unknown dataset format {fmt!r}; known formats: {sorted(FORMATS)}")
    adapter = importlib.import_module(FORMATS[fmt]).FORMAT
    if not isinstance(adapter, DatasetAdapter) or adapter.name != fmt:  # a module that misses the contract
        raise TypeError(f"{FORMATS[fmt]}.FORMAT is not the DatasetAdapter of {fmt!r}")
    return adapter


def dataset_root(entry: Mapping[str, Any]) -> Path:
    """Where the files of a config's dataset entry (``format``, ``root`` or ``part``, ...) are."""
    return get_adapter(entry["format"]).root_of(entry)


def visual_angle(entry: Mapping[str, Any]) -> float | None:
    """The full stimulus width in degrees of a config's dataset entry: its own ``visual_angle`` when the key is
    there (null = image units), else its format's default (:attr:`DatasetAdapter.visual_angle`)."""
    if "visual_angle" in entry:
        value = entry["visual_angle"]
    else:
        default = get_adapter(entry["format"]).visual_angle
        value = default(entry) if callable(default) else default
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(
            f"visual_angle of a {entry['format']} dataset must be a positive number of degrees, got {value!r}"
        )
    return float(value)
