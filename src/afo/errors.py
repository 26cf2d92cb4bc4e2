"""Which exceptions are the user's to fix (bad files, bad config) rather than bugs: afo's small vocabulary.

Every error a user can fix derives from :class:`UserError`; the CLI and the workflow scripts print it as one
clear line (the file or key and the fix). Anything else is a bug and keeps its traceback in the job's log.
Four kinds say what is wrong; a module may name a narrower one after its own subject (``ModelFileError``,
``AdapterOptionError``), always derived from one of these:

    ConfigError        a setting afo cannot use: a config key, an adapter option, a command-line or runtime setting
    InputError         data the user gives breaks its contract: a dataset file, an image, a table, a store's content
    MissingFileError   a file is not where it should be (a download's, or one an earlier step writes)
    CorruptFileError   a file afo wrote earlier cannot be read back (truncated, damaged, not what its name says)

This module imports nothing from afo, so every layer can raise these errors.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input (a file, a config key, a command-line argument) with its fix in the message."""


class ConfigError(UserError, ValueError):
    """A setting afo cannot use; the message names the key and what is allowed."""


class InputError(UserError, ValueError):
    """Data a user gives breaks its contract; the message names the file or field and the fix."""


class MissingFileError(UserError, FileNotFoundError):
    """A file is not there; the message names it and the step (or download) that provides it."""


class CorruptFileError(UserError):
    """A file afo wrote earlier cannot be read back (truncated, damaged, or not what its name says)."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)
