"""Telemetry in one place: metric instruments, spans and logs of SPEC section 6.

The rest of the code records through the helpers of ``InstanceTelemetry`` (the
socket server adds its per-chunk request counts to the instruments directly); only
this package knows the OpenTelemetry API. Modules log with structlog, configured
once by ``telemetry.logs``; the SDK and exporters are set up once at start-up by
``telemetry.setup``.
"""

from snapshotd.telemetry.instruments import InstanceTelemetry, instance_telemetry, rejected

__all__ = ["InstanceTelemetry", "instance_telemetry", "rejected"]
