"""Pure domain code: runs, events, snapshots, reducers, compaction and policies.

Nothing in this package performs I/O; journals, the runtime and the API build on it.
"""
