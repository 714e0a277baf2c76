"""The adapter's named SQL statements, read once from ``queries.sql``.

Statements live in one file with ``-- name: NAME`` headers so they can be read
(and run in psql) as SQL; ``Queries`` fills in the validated, quoted schema.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _templates() -> dict[str, str]:
    text = (resources.files(__package__) / "queries.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        found[name] = "\n".join(lines)
    return found


class Queries:
    """Every statement by name, for one schema: one attribute per ``-- name:`` header.

    The attributes are declared so a misspelt query name fails type checking; the
    file and the declarations must name the same statements.
    """

    create_run: str
    run_workflow: str
    get_run: str
    run_exists: str
    set_version: str
    set_lease: str
    list_runs: str
    run_summaries: str
    workflow_run_summaries: str
    append: str
    event_bodies: str
    list_snapshots: str
    list_links: str
    read_snapshot: str
    read_links: str
    try_run_lock: str
    run_lease: str
    latest_progress: str
    insert_snapshot: str
    lock_base: str
    delete_snapshots: str
    retire_snapshots: str
    set_pinned: str
    due_runs: str
    sweep_due: str
    sweep_due_slices: str
    set_due: str
    record_failure: str
    lock: str
    append_audit: str
    queue_audit_batch: str
    sequence_audit: str
    prune_audit: str
    read_audit: str
    get_document: str
    insert_document: str
    update_document: str

    def __init__(self, quoted_schema: str) -> None:
        templates = _templates()
        declared = set(Queries.__annotations__)
        if declared != set(templates):
            raise RuntimeError(f"queries.sql and Queries disagree: {declared ^ set(templates)}")
        for name, sql in templates.items():
            setattr(self, name, sql.replace("{schema}", quoted_schema))
