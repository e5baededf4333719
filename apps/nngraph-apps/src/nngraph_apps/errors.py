"""Typed errors of the apps. Every one derives from `NNGraphError` and from
the closest built-in exception; the CLI prints their message and exits with code 2."""

from __future__ import annotations

from nngraph_core import NNGraphError

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "ConfigError",
    "UnsafeCheckpointError",
    "find_config_error",
]


class ConfigError(NNGraphError, ValueError):
    """A setting (config file, command line or data on disk) that cannot work; the message says
    what to do instead."""

    #: the most recent instance (jsonargparse re-raises errors of class instantiation as a new
    #: ValueError that only quotes their message; the CLI uses this to recognise them)
    last: ConfigError | None = None

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        ConfigError.last = self


class CheckpointError(NNGraphError, ValueError):
    """A checkpoint cannot be resumed from: unreadable, truncated, too large, or its content does
    not match the task, optimiser, scheduler, loops or callbacks that resume from it. The message
    names the file and the entry."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint's pickle asks to run code (globals beyond plain tensors and containers)."""


class CheckpointWriteError(NNGraphError, OSError):
    """A checkpoint could not be written (full disk, read-only folder); the previous checkpoint
    file is intact."""


def find_config_error(exc: BaseException) -> ConfigError | None:
    """The [`ConfigError`][nngraph_apps.ConfigError] behind `exc` (itself, a cause, or quoted by
    jsonargparse)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConfigError):
            return seen
        seen = seen.__cause__ or seen.__context__
    last = ConfigError.last
    if last is not None and str(last) and str(last) in str(exc):
        return last
    return None
