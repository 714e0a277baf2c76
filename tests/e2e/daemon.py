"""Start a real ``snapshotd serve`` subprocess in a temp directory; talk to it over its socket."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from snapshotd.api.client import Client, ClientError
from tests.support import wait_for

START_TIMEOUT_S = 15.0


def default_config(root: Path, extra: str = "") -> str:
    """A config with an fs ``default`` instance (threshold 10), a memory ``mem`` one,
    a ``tiny`` memory one with a 20-request queue, and a small frame limit."""
    return (
        f'[socket]\npath = "{root / "s.sock"}"\nmax_frame_bytes = 65536\n\n'
        f'[instances.default]\njournal = "fs:{root / "data"}"\nsnapshot_threshold = 10\n\n'
        '[instances.mem]\njournal = "memory:"\n\n'
        '[instances.tiny]\njournal = "memory:"\nqueue_capacity = 20\n\n'
        '[workflows.kv]\nreducer = "last_by_key"\n' + extra
    )


class DaemonProcess:
    """One ``snapshotd serve --config`` process; ``root`` holds config, socket, data and log."""

    def __init__(self, root: Path | None = None, config: str | None = None) -> None:
        # Short paths: a unix socket path must stay under 108 bytes.
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="sd-e2e-"))
        self.socket_path = str(self.root / "s.sock")
        self.config_path = self.root / "config.toml"
        if config is not None or not self.config_path.exists():
            self.config_path.write_text(config if config is not None else default_config(self.root))
        self.log_path = self.root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        """Extra environment for the next spawn (fault-injection hooks, say)."""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "snapshotd", *args]

    def spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command("serve", "--config", str(self.config_path)),
                cwd=self.root,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, **self.env},
            )
        return self.proc

    def start(self) -> DaemonProcess:
        """Spawn and wait until the daemon answers ``ping``."""
        proc = self.spawn()

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode}:\n{self.log()}")
            try:
                with Client(self.socket_path, timeout=2) as client:
                    client.call("ping")
            except ClientError as exc:
                if exc.code != "unavailable":
                    raise
                return False
            return True

        wait_for(answers, START_TIMEOUT_S, what=f"ping answered (log: {self.log_path})")
        return self

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.socket_path, timeout=timeout)

    def raw(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self, field: str = "VmRSS") -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"no {field} for pid {self.pid}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def read_line(sock: socket.socket, buffer: bytearray) -> bytes:
    """Next line from ``sock`` (``buffer`` keeps what follows); b"" when the peer closed."""
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        buffer += chunk
    end = buffer.index(b"\n")
    line = bytes(buffer[:end])
    del buffer[: end + 1]
    return line


def instance_config(root: Path, journal: str, policy: str = "") -> str:
    """A config whose only instance, ``default``, uses ``journal`` (for PostgreSQL a URL with
    ``?schema=``), with ``policy`` lines added to that instance."""
    return (
        f'[socket]\npath = "{root / "s.sock"}"\n\n'
        f'[instances.default]\njournal = "{journal}"\n{policy}\n'
    )


def psql(dsn: str, sql: str, timeout: float = 30.0) -> str:
    """Run ``sql`` with psql (stop on the first error) and return its unaligned output."""
    done = subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def serve_to_exit(config: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``snapshotd serve --config`` (in the config's folder) to its exit, output captured:
    for configurations that must fail at start-up."""
    return subprocess.run(
        [sys.executable, "-m", "snapshotd", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=config.parent,
        check=False,
    )


def step_events(n: int, start: int = 0) -> list[dict[str, Any]]:
    """``n`` append-ready ``step`` events with data {"i": start + 1} .. {"i": start + n}."""
    return [{"type": "step", "data": {"i": start + i}} for i in range(1, n + 1)]


def load_all(client: Client, run: str, page_size: int = 10_000) -> list[dict[str, Any]]:
    """Every event of ``run``, through ``load`` pages after seq 0 (so no snapshot)."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.call("load", run=run, after_seq=after, limit=page_size)
        events.extend(page["events"])
        after = page["next_after"]
        if not page["has_more"]:
            return events


def steps_state(events: list[dict[str, Any]], state: Any = None) -> dict[str, Any]:
    """The ``steps`` reducer over served events: checks a loaded snapshot + tail against
    the full history."""
    steps = dict((state or {}).get("steps", {}))
    for event in events:
        steps[str(event["seq"])] = {"type": event["type"], "data": event["data"]}
    return {"steps": steps}
