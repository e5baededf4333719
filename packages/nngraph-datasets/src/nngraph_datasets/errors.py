"""Typed errors of nngraph-datasets.

All derive from [`DatasetError`][nngraph_datasets.DatasetError], itself an
[`nngraph_core.NNGraphError`][nngraph_core.NNGraphError], and from the closest built-in exception,
so `except NNGraphError` and `except ValueError` both work.
"""

from __future__ import annotations

from nngraph_core import NNGraphError

__all__ = [
    "CorruptFileError",
    "DatasetError",
    "DiskFullError",
    "FileTooLargeError",
    "IntegrityError",
    "SourceNotFoundError",
    "StorageError",
    "UnsafeFileError",
    "ZooExistsError",
    "ZooFormatError",
]


class DatasetError(NNGraphError):
    """Base class of every error raised by nngraph-datasets."""


class SourceNotFoundError(DatasetError, FileNotFoundError):
    """Image files of a source are missing; the message says how to get them."""


class ZooFormatError(DatasetError, ValueError):
    """A folder is not a (complete) zoo, or its manifest/shards do not match the schema."""


class ZooExistsError(DatasetError, FileExistsError):
    """The output folder exists already (pass `overwrite=True` to replace it)."""


class IntegrityError(DatasetError, ValueError):
    """A shard's sha256 differs from the one recorded in the manifest."""


class UnsafeFileError(DatasetError, ValueError):
    """A file asks to run code on load (a pickle with globals beyond plain tensors)."""


class CorruptFileError(DatasetError, ValueError):
    """A file is truncated, unreadable, or holds tensors of the wrong shape or type."""


class FileTooLargeError(DatasetError, ValueError):
    """A file or archive exceeds the size limits checked before anything is read."""


class StorageError(DatasetError, OSError):
    """A zoo cannot be written: the folder is read-only, not permitted, or the disk is full.

    The message names the folder and says which files were left as they were; ``errno`` is the
    one of the underlying ``OSError``.
    """


class DiskFullError(StorageError):
    """No space left on the device (``ENOSPC`` / ``EDQUOT``) while writing a zoo; the files
    written before (finished shards, an existing zoo) are intact."""
