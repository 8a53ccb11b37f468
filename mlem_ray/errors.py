"""Every error a user can cause, in one place.

`UserError` is bad input: a missing or malformed file, an impossible value, a checkpoint that does
not fit the data, resources the cluster does not have. Every layer raises a subclass of it, the
CLI turns it into one line on stderr and exit code 2, and anything else is a bug that keeps its
traceback. The subclasses say which layer refused, so a test (or a caller) can catch narrowly.

This module imports nothing, so the lowest layer (config, data) can use it.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad user input: reported as one actionable line with exit code 2.

    A ValueError, so callers that caught the layer's error as ValueError keep working."""


class ConfigError(UserError):
    """A bad configuration value or key."""


class DataError(UserError):
    """Bad data: missing or malformed tables, wrong columns or types, a data set unfit for the run."""


class CheckpointError(UserError):
    """A missing, unreadable or incompatible checkpoint."""


class SpaceError(UserError):
    """A bad search-space file: names the file and the key."""


class SweepError(UserError):
    """Bad sweep input: paths, resume state, a sweep directory another sweep is using."""


class ReportError(UserError):
    """A sweep directory that cannot be reported on."""


class ResourceError(UserError):
    """Resources asked for that the machine or the Ray cluster does not have (GPUs, nodes)."""


class UsageError(UserError):
    """Bad command-line usage outside the other layers (flag combinations, --out state)."""


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or inf; the last good checkpoint is left as it was. Not bad input
    (exit code 1), but not a bug either: the CLI prints it as one line."""
