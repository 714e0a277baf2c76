"""Start-up work of the ``fs:`` journal: format check, temp-file cleanup, run scan.

All blocking; run once from ``FsJournal.open`` in a worker thread.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson

from snapshotd.domain.errors import BadRequest, ConfigError
from snapshotd.journals.fs.codec import (
    FINGERPRINT,
    FOREIGN_OK,
    FORMAT,
    RUN_PREFIXES,
    SCHEMA_VERSION,
    entry_name,
)
from snapshotd.journals.fs.files import TEMP_PREFIX, atomic_write


def check_format(root: str, description: str) -> None:
    """Write ``format.json`` into an empty root; ConfigError when the root holds other data
    or another format."""
    path = os.path.join(root, "format.json")
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        foreign = [
            name for name in os.listdir(root) if name not in FOREIGN_OK and not name.startswith(".")
        ]
        if foreign:
            raise ConfigError(
                f"journal {description}: {path} is missing and the directory is "
                f"not empty ({', '.join(sorted(foreign)[:5])}); refusing to use it"
            ) from None
        body = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "fingerprint": FINGERPRINT}
        atomic_write(root, "format.json", orjson.dumps(body) + b"\n")
        return
    try:
        found = orjson.loads(raw)
    except orjson.JSONDecodeError:
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
            f"{FINGERPRINT}; refusing to open"
        )


def remove_temp_files(root: str, docs_dir: str) -> None:
    """Delete what interrupted writes left: temp files and half-built run directories."""
    directories = [root, docs_dir]
    with os.scandir(root) as runs:
        for entry in runs:
            if entry.name.startswith(RUN_PREFIXES) and entry.is_dir(follow_symlinks=False):
                directories.append(entry.path)
                directories.append(os.path.join(entry.path, "snapshots"))
    with os.scandir(docs_dir) as namespaces:
        directories.extend(e.path for e in namespaces if e.is_dir())
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)


def scan_runs(root: str) -> tuple[list[str], set[str]]:
    """The sorted ids of the runs in the root, and the names of every run directory.

    A directory that no id maps to (damaged ``run.json`` of an ``h-`` name, say)
    is not listed, but its name is kept, so using the run reports the damage.
    """
    ids: list[str] = []
    directories: set[str] = set()
    with os.scandir(root) as entries:
        for entry in entries:
            name = entry.name
            if not entry.is_dir(follow_symlinks=False):
                continue
            if name.startswith(RUN_PREFIXES):
                directories.add(name)
            try:
                if name.startswith("id-"):
                    run_id = bytes.fromhex(name[3:]).decode("utf-8")
                elif name.startswith("h-"):
                    run_id = orjson.loads(Path(entry.path, "run.json").read_bytes())["run_id"]
                else:
                    continue
                if entry_name(run_id) == name:
                    ids.append(run_id)
            except (ValueError, KeyError, TypeError, FileNotFoundError, BadRequest):
                # Not addressable by any id: a damaged or foreign directory.
                continue
    ids.sort()
    return ids, directories
