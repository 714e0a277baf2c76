"""snapshotd: a sidecar daemon that compacts event-sourced journals into snapshots."""

__version__ = "0.1.0"
