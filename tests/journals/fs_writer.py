"""Crash-test writer for the fs journal: appends, snapshots, prunes and writes documents
in a loop until killed, printing each acknowledged write to stdout (flushed).

Usage: ``python -m tests.journals.fs_writer ROOT SEED``. Output lines:
``ack SEQ`` (events through SEQ are durable), ``snap ID`` (snapshot written),
``deleting ID...`` (about to delete), ``audit CURSOR``, ``doc VERSION``.
"""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime

import anyio

from snapshotd.domain.model import NewEvent, Snapshot
from snapshotd.journals.fs import FsJournal
from tests.support import make_snapshot

RUN = "crash-run"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(root: str, seed: int) -> None:
    rng = random.Random(seed)
    journal = FsJournal(root)
    await journal.open()
    now = datetime.now(UTC)
    await journal.create_run(RUN, "wf", "v1", None, now)
    doc = await journal.get_document("savepoints", RUN)
    doc_version = None if doc is None else doc.version
    while True:
        now = datetime.now(UTC)
        batch = [
            NewEvent("set", {"key": f"k{rng.randrange(20)}", "value": rng.random()})
            for _ in range(rng.randint(1, 40))
        ]
        last = await journal.append(RUN, batch, expected_seq=None, lease=None, now=now)
        say(f"ack {last}")
        if rng.random() < 0.3:
            metas = [m for m in await journal.list_snapshots(RUN) if m.kind == "auto"]
            base: Snapshot | None = None
            if metas:
                base = await journal.read_snapshot(RUN, metas[0].snapshot_id)
            tail = await journal.read_events(RUN, 0 if base is None else base.meta.through_seq)
            if tail:
                made = make_snapshot(RUN, tail, base=base, reducer="last_by_key", now=now)
                await journal.write_snapshot(made, lease=None)
                say(f"snap {made.meta.snapshot_id}")
            if len(metas) >= 2:
                doomed = [m.snapshot_id for m in metas[1:]]
                say("deleting " + " ".join(doomed))
                await journal.delete_snapshots(RUN, doomed)
        if rng.random() < 0.2:
            cursor = await journal.append_audit("written", {"last_seq": last}, now)
            say(f"audit {cursor}")
        if rng.random() < 0.2:
            body = b'{"last_seq": %d}' % last
            doc_version = await journal.put_document("savepoints", RUN, body, doc_version)
            say(f"doc {doc_version}")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]))
