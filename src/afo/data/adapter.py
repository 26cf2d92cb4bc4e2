"""The contract of a dataset adapter: what every ``format`` of the config's ``datasets`` section provides.

An adapter is one module of :mod:`afo.data` that reads a dataset as users download it and ends with one
:class:`DatasetAdapter` record, registered by name in :mod:`afo.data.registry`::

    FORMAT = DatasetAdapter(name="nsd", defaults=DEFAULTS, prepare=prepare, check=check)

- ``name``: the config's ``format`` (and the command line's ``afo prepare FORMAT``).
- ``defaults``: every option the adapter accepts, with its default. ``options`` below is the dataset's config
  entry's ``options``; ``prepare`` and ``check`` read them with :func:`afo.data.options.resolve_options`, so an
  option not in ``defaults`` is an :class:`~afo.data.options.AdapterOptionError` listing the valid ones.
- ``prepare(root, out, *, image_size, options) -> dict``: read the files under ``root``, write one prepared store
  (:class:`afo.data.store.StoreWriter`, stimuli squashed to ``image_size`` px) to ``out`` and return a small
  JSON-able report (counts, masked voxels). Memory stays bounded (stream per session, run or chunk of trials).
- ``check(root, options, *, read_data=True) -> list[CheckRow]``: open the same files the same way (the same
  code, so the same errors) and write nothing; one :func:`check_row` per subject (or group average) the store
  would hold. ``read_data=False`` skips streaming the responses (``nan_voxels`` is then None). ``afo
  check-data`` runs it for every dataset of a config (:func:`afo.data.check.check_dataset`).
- ``root_of(entry)``: where a config entry's files are (default: its ``root``).
- ``visual_angle``: the full width of the stimulus in degrees of visual angle, from the dataset's paper (docs/
  datasets.md gives each source), or a function of the config entry that reads it from the dataset's own files
  (the folder format's ``dataset.yaml``); None = unknown, RF positions stay in image units. A config entry's own
  ``visual_angle`` wins (:func:`afo.data.registry.visual_angle`). Only square, centred stimuli have one number:
  a format whose frames are not square (HCP's movie) or whose channels have no retinotopy (EEG, MEG) leaves it
  None.
- ``terms``: the terms of use that the dataset's data carry, in one line with where they are stated (a data use
  agreement, a licence, the stimuli's own terms); a model trained on the dataset carries them too, so ``afo export``
  copies them into the model card (docs/sharing.md gives each source). None = not stated. A folder dataset states
  its own in ``dataset.yaml`` (``terms:``), which wins.

Every problem a user can fix is a :class:`afo.errors.UserError` naming the file, the field and the fix
(:mod:`afo.data.files` has the helpers). A new format is one module that fills this record, one line in
:data:`afo.data.registry.FORMATS`, and its test (a tiny copy of the format written by ``tests/fixtures``,
prepared and checked); docs/datasets.md says the same for contributors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypedDict

import numpy as np

from afo.data.store import SPLIT_CODE, SPLITS


class CheckRow(TypedDict):
    """What a store would hold of one subject (or group average), as ``check`` finds it."""

    dataset: str  # the format
    subject: str  # the store's subject name
    trials: int  # trials kept
    images: int  # distinct images they show
    voxels: int  # voxels (grayordinates, sensor x time points) kept
    splits: dict[str, int]  # trials per split: train, val, test
    nan_voxels: int | None  # kept voxels with a NaN response in some trial (None: responses not read)


class Prepare(Protocol):
    def __call__(self, root: str | Path, out: str | Path, *, image_size: int, options: dict) -> dict: ...


class Check(Protocol):
    def __call__(self, root: Path, options: Mapping[str, Any], *, read_data: bool = True) -> list[CheckRow]: ...


def _config_root(entry: Mapping[str, Any]) -> Path:
    return Path(entry["root"])


VisualAngle = float | Callable[[Mapping[str, Any]], float | None] | None


@dataclass(frozen=True)
class DatasetAdapter:
    """One dataset format: its name, the options it accepts, how it is prepared and checked (module docstring)."""

    name: str
    defaults: Mapping[str, Any]
    prepare: Prepare
    check: Check
    root_of: Callable[[Mapping[str, Any]], Path] = field(default=_config_root)
    visual_angle: VisualAngle = None
    terms: str | None = None


def check_row(
    fmt: str, subject: str, split_codes: np.ndarray, images: int, voxels: int, nan_voxels: int | None
) -> CheckRow:
    """A :class:`CheckRow` from the split code of every kept trial [n_trials] (:data:`afo.data.store.SPLIT_CODE`)."""
    codes = np.asarray(split_codes)
    return {
        "dataset": fmt,
        "subject": subject,
        "trials": int(codes.size),
        "images": int(images),
        "voxels": int(voxels),
        "splits": {name: int((codes == SPLIT_CODE[name]).sum()) for name in SPLITS},
        "nan_voxels": None if nan_voxels is None else int(nan_voxels),
    }


def nan_columns(blocks: Iterable[np.ndarray], n_voxels: int) -> int:
    """Columns (voxels) with a NaN in any of the [trials, voxels] blocks (all covering the same voxels)."""
    nan = np.zeros(n_voxels, dtype=bool)
    for block in blocks:
        nan |= np.isnan(block).any(axis=0)
    return int(nan.sum())
