"""Start-up work of the ``fs:`` journal: lock, format check, temp cleanup, run scan.

All blocking; run once from ``FsJournal.open`` in a worker thread. Nothing here
follows a symlink inside the root or creates anything in a directory it refuses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil

import orjson

from snapshotd.domain.errors import BadRequest, ConfigError, Corrupt
from snapshotd.journals.fs.codec import (
    FINGERPRINT,
    FOREIGN_OK,
    FORMAT,
    LOCK_NAME,
    RUN_PREFIXES,
    SCHEMA_VERSION,
    entry_name,
)
from snapshotd.journals.fs.files import DIR_MODE, FILE_MODE, STAGING, Root, make_dir

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW_DIR = _DIR_FLAGS | os.O_NOFOLLOW


def open_root(path: str, description: str) -> tuple[Root, int]:
    """Lock the root, check or write its format, empty ``staging/``; the root and
    the lock's descriptor. ConfigError when the root is not ours to use.

    A directory that holds other data is refused before anything is created in it.
    """
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    root_fd = os.open(path, _DIR_FLAGS)
    lock_fd = None
    try:
        formatted = _refuse_foreign(root_fd, path, description)
        lock_fd = os.open(
            LOCK_NAME,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            FILE_MODE,
            dir_fd=root_fd,
        )
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"journal {description}: {os.path.join(path, LOCK_NAME)} is locked by another "
                "process (another snapshotd uses this directory)"
            ) from None
        make_dir(root_fd, STAGING)
        staging = _open_own_dir(root_fd, path, STAGING, description)
        root = Root(root_fd, path, staging)
        try:
            _check_format(root, description, formatted)
            make_dir(root_fd, "documents")
            os.close(_open_own_dir(root_fd, path, "documents", description))
            _empty(staging)
        except BaseException:
            os.close(staging)
            raise
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        os.close(root_fd)
        raise
    return root, lock_fd


def _refuse_foreign(root_fd: int, path: str, description: str) -> bool:
    """Whether ``format.json`` exists; ConfigError when it does not and the
    directory holds anything but what an interrupted first start leaves."""
    names = os.listdir(root_fd)
    if "format.json" in names:
        return True
    foreign = [n for n in names if n not in FOREIGN_OK and not n.startswith(".")]
    if foreign:
        raise ConfigError(
            f"journal {description}: {os.path.join(path, 'format.json')} is missing and the "
            f"directory is not empty ({', '.join(sorted(foreign)[:5])}); refusing to use it"
        )
    return False


def _open_own_dir(root_fd: int, path: str, name: str, description: str) -> int:
    try:
        return os.open(name, _NOFOLLOW_DIR, dir_fd=root_fd)
    except OSError as exc:
        raise ConfigError(
            f"journal {description}: {os.path.join(path, name)} is not a directory of its own "
            f"({exc.strerror}); refusing to open"
        ) from None


def _check_format(root: Root, description: str, formatted: bool) -> None:
    path = root.join("format.json")
    if not formatted:
        body = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "fingerprint": FINGERPRINT}
        root.atomic_write(root.fd, "format.json", orjson.dumps(body) + b"\n")
        return
    try:
        found = orjson.loads(root.read("format.json"))
    except (orjson.JSONDecodeError, Corrupt):
        found = None
    expected = (FORMAT, SCHEMA_VERSION, FINGERPRINT)
    actual = (
        (found.get("format"), found.get("schema_version"), found.get("fingerprint"))
        if isinstance(found, dict)
        else None
    )
    if actual != expected:
        raise ConfigError(
            f"journal {description}: {path} says {actual!r} but this snapshotd "
            f"reads format {FORMAT!r} schema_version {SCHEMA_VERSION} fingerprint "
            f"{FINGERPRINT}; refusing to open (see docs/operations.md, The fs: format)"
        )


def _empty(staging: int) -> None:
    """Delete what interrupted writes left in ``staging/`` (never through a symlink:
    one is unlinked itself, and rmtree walks by descriptor)."""
    for entry in os.scandir(staging):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.name, dir_fd=staging)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.name, dir_fd=staging)
    os.fsync(staging)


def scan_runs(root: Root) -> tuple[list[str], set[str]]:
    """The sorted ids of the runs in the root, and the names of run directories no
    id maps to (damaged ``run.json`` of an ``h-`` name, say): using the run a name
    belongs to reports the damage. One directory listing; no run is opened
    except ``h-`` ones (ids too long for their name).
    """
    ids: list[str] = []
    stray: set[str] = set()
    for entry in os.scandir(root.fd):
        name = entry.name
        if not name.startswith(RUN_PREFIXES) or not (
            entry.is_dir(follow_symlinks=False) or entry.is_symlink()
        ):
            continue
        try:
            if name.startswith("id-"):
                run_id = bytes.fromhex(name[3:]).decode("utf-8")
            else:
                run_id = orjson.loads(root.read(name, "run.json"))["run_id"]
            if entry_name(run_id) == name:
                ids.append(run_id)
                continue
        except (ValueError, KeyError, TypeError, OSError, BadRequest, Corrupt):
            pass
        stray.add(name)
    ids.sort()
    return ids, stray
