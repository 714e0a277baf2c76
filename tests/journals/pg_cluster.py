"""A private PostgreSQL cluster a test may reconfigure, stop and start (never the shared one)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.conftest import _private_cluster


@dataclass
class Cluster:
    host: str
    port: int
    stop_command: list[str]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @property
    def datadir(self) -> str:
        return self.stop_command[self.stop_command.index("-D") + 1]

    def psql(self, sql: str) -> str:
        done = subprocess.run(
            ["psql", self.dsn, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    def _ctl(self, action: str) -> None:
        command = self.stop_command[: self.stop_command.index("-D") + 2]
        if action == "start":
            command += ["-w", "-o", f"-p {self.port} -k {self.datadir} -h {self.host}"]
            command += ["-l", f"{self.datadir}/log", "start"]
        else:
            command += ["-m", "immediate", "stop"]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        self._ctl("stop")

    def start(self) -> None:
        self._ctl("start")


@contextmanager
def private_cluster() -> Iterator[Cluster]:
    stop: list[str] = []
    started = _private_cluster(stop)
    assert started is not None, "initdb/pg_ctl are needed for this test"
    cluster = Cluster(started[0], started[1], stop)
    try:
        yield cluster
    finally:
        subprocess.run(stop, check=False, capture_output=True, timeout=60)
        shutil.rmtree(cluster.datadir, ignore_errors=True)
