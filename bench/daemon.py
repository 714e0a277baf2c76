"""Start ``snapshotd serve`` as a subprocess with a generated config, and stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.wire import Connection, wait_for_socket

SNAPSHOTD = Path(sys.executable).parent / "snapshotd"


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def render_config(socket_path: str, instances: dict[str, dict[str, Any]], **workflows: Any) -> str:
    """A snapshotd TOML config: ``instances`` and ``workflows`` map names to keys."""
    lines = [
        "[socket]",
        f"path = {_toml_value(socket_path)}",
        # Appends of 5,000 events and 100,000-event pages are larger than the default.
        "max_frame_bytes = 33554432",
    ]
    for section, tables in (("instances", instances), ("workflows", workflows)):
        for name, keys in tables.items():
            lines.append(f"\n[{section}.{name}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
    return "\n".join(lines) + "\n"


class Daemon:
    """``with Daemon(workdir, config_text) as d:`` runs snapshotd until the block ends."""

    def __init__(self, workdir: Path, config_text: str, socket_path: str) -> None:
        self.workdir = workdir
        self.socket_path = socket_path
        self.config_path = workdir / "snapshotd.toml"
        self.config_path.write_text(config_text)
        self.log_path = workdir / "snapshotd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SNAPSHOTD_"))}
        env["OTEL_SDK_DISABLED"] = "true"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(SNAPSHOTD), "serve", "--config", str(self.config_path)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        try:
            wait_for_socket(self.socket_path, 30.0, lambda: self.process.poll() is None)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def connect(self) -> Connection:
        return Connection(self.socket_path)

    def peak_rss_bytes(self) -> int:
        """VmHWM: the highest resident set size of the daemon process so far."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc status")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the drain takes longer than the SPEC's 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
