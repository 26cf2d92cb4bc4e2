"""Which exceptions are the user's to fix (bad files, bad config) rather than bugs.

Every error a user can fix derives from :class:`UserError`; the CLI and the workflow scripts print it as one
clear line (the file or key and the fix). Anything else is a bug and keeps its traceback in the job's log.
This module imports nothing from afo, so every layer can raise these errors.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input (a file, a config key, a command-line argument) with its fix in the message."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)
