"""Telemetry in one place: metric instruments, spans and logs of SPEC section 6.

The rest of the code calls the small helpers of ``InstanceTelemetry``; only this
package knows the OpenTelemetry API and structlog. The SDK and exporters are set
up once at start-up by ``snapshotd.telemetry.setup``.
"""

from snapshotd.telemetry.instruments import InstanceTelemetry, instance_telemetry, rejected

__all__ = ["InstanceTelemetry", "instance_telemetry", "rejected"]
