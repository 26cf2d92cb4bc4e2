"""A dataset entry's options (checked against the adapter's defaults), subject numbers, progress and warnings."""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from afo.errors import ConfigError


class AdapterOptionError(ConfigError):
    """A dataset's config entry has an unknown option or a value the adapter cannot use (the fix is in the config)."""


def resolve_options(adapter: str, options: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by the config entry; an unknown key is an error that lists the valid ones."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise AdapterOptionError(
            f"{adapter}: unknown option(s) {unknown}; valid options are {sorted(defaults)} (see docs/datasets.md)"
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


def parse_subject_number(value: Any, pattern: str, what: str) -> int:
    """1 from 1, '1', 'sub-01', 'subj01', 'P1', 'CSI1'..."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    match = re.search(r"(\d+)\s*$", str(value))
    if not match:
        raise AdapterOptionError(f"{what}: cannot read a subject number from {value!r}; use e.g. {pattern}")
    return int(match.group(1))
