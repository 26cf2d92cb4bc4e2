"""Which exceptions are the user's to fix (bad files, bad config) rather than bugs.

The CLI prints these as one clear message; anything else keeps its traceback because it is ours to fix.
"""

from __future__ import annotations

from afo.config import ConfigError
from afo.data.store import StoreError

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, StoreError, FileNotFoundError, ValueError, KeyError)
