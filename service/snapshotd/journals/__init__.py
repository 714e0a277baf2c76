"""Journals: where runs, events, snapshots, audit entries and documents live.

One protocol (``base.Journal``) and one adapter per storage: ``memory``, ``fs``
and ``postgres``. Adapters hold all I/O and translate storage errors into
``snapshotd.domain.errors`` at their edge.
"""
