"""The ``postgresql://`` journal: asyncpg pool, the migrations' schema, LISTEN/NOTIFY.

Modules: ``adapter`` (the Journal), ``queries`` (named SQL of queries.sql),
``listener`` (LISTEN with reconnect), ``errors`` (driver errors to domain errors),
``rows`` (row decoding).
"""

from snapshotd.journals.postgres.adapter import PostgresJournal

__all__ = ["PostgresJournal"]
