"""User-facing errors.

A :class:`MegabenchError` message names the file (or object), what is wrong with it and what to do.
The CLI prints it on one line and exits non-zero; library callers can catch it.
"""

from __future__ import annotations


class MegabenchError(Exception):
    """Bad input or an impossible request; the message says where, what and what to do."""


class DataError(MegabenchError):
    """A data file (pack, pair list, feature store, matio file) is malformed or inconsistent."""


class ConfigError(MegabenchError):
    """A spec or recipe file is malformed: unknown key, wrong type, missing base."""


class UnsafePickleError(DataError):
    """A pickle asked for a global outside the allow-list; nothing from it was executed."""


class OutputError(MegabenchError):
    """An output may not be written: it is an input of the run, read-only, someone else's data, or unwritable."""
