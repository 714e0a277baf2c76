"""The ``snapshotd`` CLI: argument parsing, client commands against a real daemon, demo, migrate."""

from __future__ import annotations

import argparse
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
    error = json.loads(out)["error"]
    assert error == {"code": "not_found", "message": "run 'missing' not found"}
    assert err == "snapshotd: not_found: run 'missing' not found\n"


@pytest.mark.parametrize(
    ("argv", "code", "printed"),
    [
        (["nosuchrun"], 1, "skipped: no_run"),
        (["cli-run", "--lease", "other"], 1, "skipped: stale_lease"),
        (["cli-run", "--lease", "L"], 0, ""),  # taken, or not due: both succeed
    ],
)
def test_snapshot_now_exit_code_says_whether_a_snapshot_is_there(
    daemon: DaemonProcess,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    printed: str,
) -> None:
    result = _run(capsys, "snapshot-now", *argv, "--socket", daemon.socket_path)
    assert result[0] == code
    assert result[1].startswith(printed)
    result = _run(capsys, "snapshot-now", *argv, "--json", "--socket", daemon.socket_path)
    assert result[0] == code
    assert json.loads(result[1])["status"] in ("taken", "skipped")


def test_every_option_and_argument_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert commands.choices
    for name, command in commands.choices.items():
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes:" in out
    assert "2    usage or configuration error" in out


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
    assert summary["events"] == 240  # 2 runs of 60 events in each of the 2 workflows
    assert summary["snapshot_requests"] == 24
    kv, steps = summary["workflows"]["demo_kv"], summary["workflows"]["demo_steps"]
    assert kv["full_replay_events"] == steps["full_replay_events"] == 60
    # This daemon configures no demo_kv workflow: both fold with the default, and the
    # demo says so instead of claiming a bounded state.
    assert kv["reducer"] == steps["reducer"] == "steps"
    assert f"the daemon at {daemon.socket_path} folds demo_kv with steps" in summary["note"]
    assert "SNAPSHOTD_WORKFLOWS__DEMO_KV__REDUCER=last_by_key" in summary["note"]
    assert "appended" in err


def test_demo_says_when_no_snapshot_was_taken(
    daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("--socket", daemon.socket_path, "--instance", "mem", "--runs", "1", "--events", "20")
    code, out, _ = _run(capsys, "demo", *argv, "--json")
    summary = json.loads(out)
    assert code == 0
    assert summary["workflows"]["demo_kv"]["reducer"] is None
    assert summary["note"].startswith("no snapshot was taken for a demo run")


def test_demo_embedded_compares_a_bounded_state_with_the_step_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(
        capsys, "demo", "--socket", str(tmp_path / "none.sock"), "--runs", "2", "--events", "300"
    )
    assert code == 0
    assert "embedded" in err
    assert "snapshots taken:" in out
    assert "(workflow demo_kv, reducer last_by_key, snapshot " in out
    assert "(workflow demo_steps, reducer steps, snapshot " in out
    assert out.count("snapshot + tail:") == 2
    assert "why they differ: last_by_key keeps one value per key" in out
    taken = int(out.split("snapshots taken:")[1].split()[0])
    assert taken >= 4


@pytest.mark.postgres
def test_migrate(pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = _run(capsys, "migrate", "--dsn", pg_dsn)
    assert code == 0
    code, out, _ = _run(capsys, "migrate", "--dsn", pg_dsn, "--json")
    assert (code, json.loads(out)["applied"]) == (0, [])


@pytest.mark.postgres
def test_migrate_reads_every_dsn_of_snapshotd_dsn(
    pg_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = [f"{pg_dsn}?schema=shard_{i}" for i in range(2)]
    monkeypatch.setenv("SNAPSHOTD_DSN", f" {shards[0]}\n\t{shards[1]} ")
    code, out, _ = _run(capsys, "migrate", "--json")
    result = json.loads(out)
    assert code == 0
    assert [db["applied"] for db in result["databases"]] == [result["applied"]] * 2
    assert result["applied"]
    assert all("schema=shard_" in db["database"] for db in result["databases"])
    code, out, _ = _run(capsys, "migrate")
    assert code == 0
    assert out.count("database is up to date") == 2
    # --dsn wins over the environment.
    code, out, _ = _run(capsys, "migrate", "--dsn", shards[0])
    assert (code, out) == (0, "database is up to date\n")


def test_migrate_without_a_dsn_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNAPSHOTD_DSN", "  ")
    code, out, err = _run(capsys, "migrate", "--json")
    assert code == 2
    assert "no DSN: pass --dsn or set SNAPSHOTD_DSN" in err
    assert json.loads(out)["error"]["code"] == "usage"
