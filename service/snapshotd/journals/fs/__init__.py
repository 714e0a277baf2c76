"""The ``fs:PATH`` journal (SPEC section 5): runs, events, snapshots, audit log and documents.

Layout under the root::

    format.json                        format, schema version, storage fingerprint
    lock                               flock'ed by the one process using the root
    audit.jsonl                        audit log, one entry per line (append + fsync)
    <name>/run.json                    run record (atomic rewrite)
    <name>/events.jsonl                one ``records.event_json`` line per event
    <name>/snapshots/<snapshot_id>.snap   metadata line, then the state payload
    documents/<name>/<name>.doc        header line with the version, then the body

``<name>`` is ``id-`` + the hex of the UTF-8 id when that fits in 240 characters,
else ``h-`` + its SHA-256, so no id can reach outside the root, and a run directory
(always ``id-``/``h-``) never collides with the root's own entries. Run directories
sit directly in the root, as SPEC section 5 says, so tools can glob ``PATH/id-*``.
A run directory is built under a temp name and renamed into place, so a run exists
whole or not at all.

The flock makes this process the only writer, which is what lets each run keep a
cache (record, events tip, snapshot metadata) instead of re-reading files: caches
are filled from disk on first touch and updated by the worker thread that did the
write, so a cancelled caller can never leave a cache behind the disk. For the same
reason the set of run directory names read at open (and added to by ``create_run``)
answers "no such run" on the event loop, with no file-system call: a flood of
requests naming unknown runs must not queue a worker thread each. Once a run's
cache is filled, ``get_run``, ``list_snapshots`` and ``damaged_snapshots`` are
answered from it too; only first use of a run, event reads and writes touch disk.

Filling a run's cache also parses its whole ``events.jsonl`` once (about 0.8 s per
million events), because a bad line anywhere makes the run corrupt (SPEC section 5),
not only when a read happens to reach it. The damage is remembered: every method
that needs the run's events (``get_run``, ``append``, the reads) raises Corrupt
naming file and line until the file is repaired and the journal reopened, so
nothing is ever appended on top of it. Other runs are unaffected.
"""

from snapshotd.journals.fs.adapter import FsJournal
from snapshotd.journals.fs.codec import FINGERPRINT, FORMAT, SCHEMA_VERSION, entry_name

__all__ = ["FINGERPRINT", "FORMAT", "SCHEMA_VERSION", "FsJournal", "entry_name"]
