"""The ``snapshotd`` CLI: argument parsing, client commands against a real daemon, demo, migrate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotd.cli import build_parser, main
from tests.e2e.daemon import DaemonProcess


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    process = DaemonProcess().start()
    with process.client() as c:
        c.call("create_run", run="cli-run", workflow="kv", version="v1", lease="L")
        events = [{"type": "put", "data": {"key": f"k{i % 2}", "value": i}} for i in range(15)]
        c.call("append", run="cli-run", events=events, lease="L")
    try:
        yield process
    finally:
        process.stop()
        process.cleanup()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],
        ["serve", "--config", "x.toml"],
        ["migrate", "--dsn", "postgresql://u@h/db"],
        ["demo", "--runs", "2", "--events", "10", "--batch", "5"],
        ["status", "--json", "--socket", "/s"],
        ["snapshot", "r", "--lease", "l", "--instance", "mem"],
        ["snapshot-now", "r", "--force", "--kind", "safety"],
        ["snapshot-now", "r", "--label", "before-migration-42"],
        ["load", "r", "--after-seq", "3", "--limit", "10"],
        ["load", "r", "--snapshot", "id", "--limit", "10"],
        ["runs", "--workflow", "w", "--after", "r", "--limit", "5"],
        ["list", "r"],
        ["pin", "r", "id"],
        ["unpin", "r", "id"],
        ["verify", "r"],
        ["audit", "--cursor", "4", "--limit", "2"],
    ],
)
def test_every_command_parses(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert callable(args.func)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["load"],
        ["pin", "r"],
        ["migrate"],
        ["snapshot-now", "r", "--kind", "auto"],
        ["load", "r", "--snapshot", "id", "--after-seq", "1"],
        ["runs", "--limit", "many"],
        ["demo", "--runs", "0"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2


@pytest.mark.parametrize(
    "argv", [["--json", "snapshot-now"], ["--json", "bogus"], ["load", "--json"]]
)
def test_usage_errors_with_json_are_json_too(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2
    assert json.loads(out)["error"]["code"] == "usage"
    assert "usage:" in err


def test_status(daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "status", "--socket", daemon.socket_path)
    assert code == 0
    assert "default (fs:" in out
    code, out, _ = _run(capsys, "status", "--socket", daemon.socket_path, "--json")
    assert json.loads(out)["instances"]["mem"]["journal"] == "memory:"


def test_socket_from_config_file(daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "status", "--config", str(daemon.config_path), "--json")
    assert code == 0
    assert "tiny" in json.loads(out)["instances"]


def test_snapshot_commands(daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> None:
    sock = ("--socket", daemon.socket_path)
    code, out, _ = _run(capsys, "snapshot", "cli-run", *sock)
    assert (code, out.strip() in ("queued", "coalesced")) == (0, True)
    code, out, _ = _run(capsys, "snapshot-now", "cli-run", "--force", "--lease", "L", *sock)
    assert code == 0
    assert out.startswith(("taken ", "skipped: "))
    code, out, _ = _run(capsys, "list", "cli-run", *sock, "--json")
    snaps = json.loads(out)["snapshots"]
    assert snaps
    sid = snaps[0]["snapshot_id"]
    code, out, _ = _run(capsys, "list", "cli-run", *sock)
    assert sid in out
    assert _run(capsys, "pin", "cli-run", sid, *sock)[1].strip() == "pinned"
    assert _run(capsys, "unpin", "cli-run", sid, *sock)[1].strip() == "unpinned"
    code, out, _ = _run(capsys, "verify", "cli-run", *sock)
    assert (code, "all good" in out) == (0, True)
    code, out, _ = _run(capsys, "snapshot-now", "cli-run", *sock)
    assert out.strip() == "skipped: no_events"


def test_load_and_audit(daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> None:
    sock = ("--socket", daemon.socket_path)
    code, out, _ = _run(capsys, "load", "cli-run", "--after-seq", "0", "--limit", "3", *sock)
    assert code == 0
    assert "run cli-run: workflow kv" in out
    assert "more events follow: --after-seq 3" in out
    code, out, _ = _run(capsys, "load", "cli-run", "--json", *sock)
    assert json.loads(out)["run"]["lease"] == "L"
    code, out, _ = _run(capsys, "audit", "--limit", "2", *sock)
    assert code == 0
    assert "config_loaded" in out
    assert "next cursor 2" in out


def test_daemon_errors_exit_1(daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "load", "missing", "--socket", daemon.socket_path)
    assert code == 1
    assert "not_found" in err
    code, _, err = _run(capsys, "list", "x", "--instance", "ghost", "--socket", daemon.socket_path)
    assert code == 1
    assert "unknown_instance" in err


def test_options_before_the_command(
    daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "--json", "--socket", daemon.socket_path, "status")
    assert code == 0
    assert "mem" in json.loads(out)["instances"]
    code, out, _ = _run(capsys, "--config", str(daemon.config_path), "--json", "status")
    assert (code, "tiny" in json.loads(out)["instances"]) == (0, True)


def test_json_errors_are_json(daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "load", "missing", "--json", "--socket", daemon.socket_path)
    assert code == 1
    assert json.loads(out)["error"]["code"] == "not_found"
    assert "not_found" in err


def test_unreachable_daemon_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "status", "--socket", str(tmp_path / "none.sock"))
    assert code == 1
    assert "cannot reach snapshotd" in err


def test_bad_config_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[socket]\nmode = "rw"\n')
    code, _, err = _run(capsys, "status", "--config", str(config))
    assert code == 2
    assert "socket.mode" in err


def test_demo_against_a_running_daemon(
    daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(
        capsys,
        "demo",
        "--socket",
        daemon.socket_path,
        "--runs",
        "2",
        "--events",
        "60",
        "--batch",
        "10",
        "--json",
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["events"] == 120
    assert summary["snapshot_requests"] == 12
    assert summary["load"]["full_replay_events"] == 60
    assert "appended" in err


def test_demo_embedded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        capsys, "demo", "--socket", str(tmp_path / "none.sock"), "--runs", "2", "--events", "300"
    )
    assert code == 0
    assert "embedded" in err
    assert "snapshots taken:" in out
    assert "snapshot + tail:" in out
    taken = int(out.split("snapshots taken:")[1].split()[0])
    assert taken >= 2


@pytest.mark.postgres
def test_migrate(pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = _run(capsys, "migrate", "--dsn", pg_dsn)
    assert code == 0
    code, out, _ = _run(capsys, "migrate", "--dsn", pg_dsn, "--json")
    assert (code, json.loads(out)) == (0, {"applied": []})
