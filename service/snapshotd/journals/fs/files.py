"""Blocking file primitives of the ``fs:`` journal: atomic writes, durable renames.

Everything here blocks and runs in worker threads. OSError propagates unchanged
(the adapter translates it once).
"""

from __future__ import annotations

import contextlib
import os
import secrets

TEMP_PREFIX = ".tmp-"
"""Every temporary file or directory starts with this; start-up removes them."""


def fsync_dir(path: str) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(directory: str) -> str:
    return os.path.join(directory, TEMP_PREFIX + secrets.token_hex(8))


def write_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite until everything is written (a regular file may accept less per call)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def atomic_write(directory: str, name: str, data: bytes) -> None:
    """Replace ``directory/name`` with ``data``: temp file, fsync, rename, fsync directory.

    A crash at any point leaves either the old file or the new one, plus at most
    a temp file that start-up removes.
    """
    tmp = temp_path(directory)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            write_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
