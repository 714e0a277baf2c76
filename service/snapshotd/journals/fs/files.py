"""Blocking file primitives of the ``fs:`` journal: private modes, no symlinks, atomic writes.

Everything inside the journal is reached from the root directory's descriptor one
component at a time with ``O_NOFOLLOW``, so a symbolic link planted anywhere in
the tree is never followed: opening through one raises Corrupt naming the path
(that run, document or log is damaged; nothing outside the root is touched).
Files are created ``0600`` and directories ``0700``.

Everything here blocks and runs in worker threads. Other OSErrors propagate
unchanged (the adapter translates them once).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator

from snapshotd.domain.errors import Corrupt

TEMP_PREFIX = ".tmp-"
"""Every temporary file or directory starts with this."""

STAGING = "staging"
"""The root's directory of files and run directories being built: every temporary
lives there (renamed into place when whole), so start-up empties it and never has
to visit the runs."""

FILE_MODE = 0o600
DIR_MODE = 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_FOLLOWED = (errno.ELOOP, errno.ENOTDIR)


def temp_name() -> str:
    return TEMP_PREFIX + secrets.token_hex(8)


def write_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite until everything is written (a regular file may accept less per call)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _refused(path: str) -> Corrupt:
    return Corrupt(f"{path}: a symbolic link or not what the journal stored there; not followed")


class Root:
    """The journal's root directory, held open; the base of every path inside it."""

    def __init__(self, fd: int, path: str, staging: int) -> None:
        self.fd = fd
        self.path = path
        self.staging = staging

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def open(self, parts: tuple[str, ...], flags: int, *, directory: bool = False) -> int:
        """Open ``parts`` below the root without following any symlink on the way.

        Raises Corrupt when a component is a symlink (or a file where a directory
        belongs), FileNotFoundError when one is missing.
        """
        parent = self.fd
        opened: list[int] = []
        try:
            for index, part in enumerate(parts):
                last = index == len(parts) - 1
                try:
                    if last and not directory:
                        return os.open(
                            part, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=parent
                        )
                    parent = os.open(part, _DIR_FLAGS, dir_fd=parent)
                except OSError as exc:
                    if exc.errno in _NOT_FOLLOWED:
                        raise _refused(self.join(*parts[: index + 1])) from None
                    exc.filename = self.join(*parts[: index + 1])
                    raise
                if last:
                    return parent
                opened.append(parent)
            return os.dup(self.fd)
        finally:
            for fd in opened:
                os.close(fd)

    @contextlib.contextmanager
    def directory(self, *parts: str) -> Iterator[int]:
        """The directory ``parts`` (the root itself when empty), open for the block."""
        fd = self.open(parts, 0, directory=True)
        try:
            yield fd
        finally:
            os.close(fd)

    def read(self, *parts: str) -> bytes:
        fd = self.open(parts, os.O_RDONLY)
        try:
            return read_fd(fd)
        finally:
            os.close(fd)

    def atomic_write(self, directory: int, name: str, data: bytes, *, durable: bool = True) -> None:
        """Replace ``name`` in the open ``directory`` with ``data``: temp file in the
        staging directory, fsync, rename, fsync directory.

        A crash at any point leaves either the old file or the new one, plus at most
        a temp file that start-up removes. The rename replaces a symlink at ``name``
        itself, never its target. Not ``durable``: no directory fsync, so a crash may
        undo the rename (the old file stays).
        """
        tmp = temp_name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, FILE_MODE, dir_fd=self.staging)
        try:
            try:
                write_all(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=self.staging, dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.staging)
            raise
        if durable:
            os.fsync(directory)

    def close(self) -> None:
        os.close(self.staging)
        os.close(self.fd)


def read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def make_dir(parent: int, name: str) -> bool:
    """Create directory ``name`` in ``parent`` (0700); False when it exists."""
    try:
        os.mkdir(name, DIR_MODE, dir_fd=parent)
    except FileExistsError:
        return False
    return True
