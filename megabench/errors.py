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


class UnknownNameError(MegabenchError, KeyError):
    """A name missing from a registry (model, head, attention, evaluation, data format ...).

    A ``KeyError`` too, so ``name in registry``-style callers and ``except KeyError`` keep working;
    the message lists close matches and where to see every name.
    """

    def __str__(self) -> str:  # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""
