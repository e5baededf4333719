"""Errors of the apps that mean "the configuration cannot work"; the CLI prints their message."""

from __future__ import annotations

__all__ = ["ConfigError", "find_config_error"]


class ConfigError(ValueError):
    """A setting (config file, command line or data on disk) that cannot work; the message says
    what to do instead."""

    #: the most recent instance (jsonargparse re-raises errors of class instantiation as a new
    #: ValueError that only quotes their message; the CLI uses this to recognise them)
    last: ConfigError | None = None

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        ConfigError.last = self


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
