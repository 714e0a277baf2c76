"""The ``fs:PATH`` journal (SPEC section 5): runs, events, snapshots, audit log and documents.

Layout under the root (files 0600, directories 0700, no symlink ever followed)::

    format.json                        format, schema version, storage fingerprint
    lock                               flock'ed by the one process using the root
    audit.jsonl                        audit log: checksummed batches (``framing``)
    due.jsonl                          the sweep index (``index``)
    staging/                           every temporary; emptied at start-up
    <name>/run.json                    run record with its due point (atomic rewrite)
    <name>/events.jsonl                ``records.event_json`` lines in checksummed batches
    <name>/snapshots/<snapshot_id>.snap   metadata line, then the state payload
    documents/<name>/<name>.doc        header line with the version, then the body

``<name>`` is ``id-`` + the hex of the UTF-8 id when that fits in 240 characters,
else ``h-`` + its SHA-256, so no id can reach outside the root, and a run directory
(always ``id-``/``h-``) never collides with the root's own entries. Run directories
sit directly in the root, as SPEC section 5 says, so tools can glob ``PATH/id-*``.
A run directory is built in ``staging/`` and renamed into place, so a run exists
whole or not at all.

The flock makes this process the only writer, which is what lets runs be cached
(record, events tip, snapshot metadata; at most ``cached_runs`` of them, least
recently used out) instead of re-reading files: a cache is filled from disk on
first touch and updated by the worker thread that did the write, so a cancelled
caller can never leave it behind the disk. For the same reason the sorted run
ids read at open (and added to by ``create_run``) answer "no such run" on the
event loop, with no file-system call, and the index answers sweeps without
opening any run.

Filling a run's cache also checks its whole ``events.jsonl`` once (a CRC pass),
because a bad line anywhere makes the run corrupt (SPEC section 5), not only when a
read happens to reach it; a file changed behind the daemon's back is checked again
by the next read. The damage is remembered: every method that needs the run's
events (``get_run``, ``append``, the reads) raises Corrupt naming file and line
until the file is repaired and the journal reopened, so nothing is ever appended
on top of it. Other runs are unaffected.
"""

from snapshotd.journals.fs.adapter import FsJournal
from snapshotd.journals.fs.codec import FINGERPRINT, FORMAT, SCHEMA_VERSION, entry_name

__all__ = ["FINGERPRINT", "FORMAT", "SCHEMA_VERSION", "FsJournal", "entry_name"]
