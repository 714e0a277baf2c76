"""The runtime: per-instance snapshotter actors under a supervisor, driven by a mailbox.

``open_daemon(config)`` is the entry point; the API works on ``Daemon`` and ``Instance``.
"""

from snapshotd.runtime.daemon import Daemon, open_daemon
from snapshotd.runtime.instance import Instance

__all__ = ["Daemon", "Instance", "open_daemon"]
