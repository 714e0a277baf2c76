"""Configuration: defaults, the TOML file, env overrides, and one clear error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapshotd.config import load_config
from snapshotd.domain.errors import ConfigError
from snapshotd.domain.policies import Policy
from tests.e2e.daemon import serve_to_exit

FULL = """
[socket]
path = "/run/snapshotd.sock"
mode = "0660"
max_frame_bytes = 4096
allowed_uids = [1000, 1001]
max_connections = 8

[instances.default]
journal = "fs:./data"
snapshot_threshold = 50
snapshot_interval_s = 0
max_snapshot_bytes = 2048
keep_snapshots = 3
safety_ttl_s = 60
queue_capacity = 5

[instances.Scratch]
journal = "memory:"
snapshot_threshold = "infinity"

[workflows.order]
reducer = "merge_patch"
snapshot_threshold = 10
savepoint_upgrade = "mypkg.upgrades:v2"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "snapshotd.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_file_or_env() -> None:
    config = load_config(None, {})
    assert config.socket.path == "./snapshotd.sock"
    assert config.socket.mode == 0o600
    assert config.socket.max_frame_bytes == 1_048_576
    assert config.socket.allowed_uids is None
    assert list(config.instances) == ["default"]
    default = config.instances["default"]
    assert default.journal == "fs:./data"
    assert default.policy == Policy()
    assert default.queue_capacity == 10_000
    assert config.workflows == {}


def test_full_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL), {"UNRELATED": "x", "SNAPSHOTD_MIGRATIONS": "/m"})
    assert config.socket.mode == 0o660
    assert config.socket.allowed_uids == (1000, 1001)
    assert config.socket.max_connections == 8
    default = config.instances["default"]
    assert default.policy == Policy(
        snapshot_threshold=50,
        snapshot_interval_s=0,
        max_snapshot_bytes=2048,
        keep_snapshots=3,
        safety_ttl_s=60,
    )
    assert default.queue_capacity == 5
    assert config.instances["Scratch"].policy.snapshot_threshold is None
    assert config.workflows["order"].overrides == {
        "reducer": "merge_patch",
        "snapshot_threshold": 10,
        "savepoint_upgrade": "mypkg.upgrades:v2",
    }


def test_env_overrides_win_and_match_names_case_insensitively(tmp_path: Path) -> None:
    env = {
        "SNAPSHOTD_SOCKET_PATH": "/tmp/other.sock",
        "snapshotd_socket_allowed_uids": "0, 1000",
        "SNAPSHOTD_INSTANCES__DEFAULT__SNAPSHOT_THRESHOLD": "infinity",
        "SNAPSHOTD_INSTANCES__scratch__QUEUE_CAPACITY": "7",
        "SNAPSHOTD_INSTANCES__PG__JOURNAL": "postgresql://u@h/db?schema=s",
        "SNAPSHOTD_INSTANCES__PG__SNAPSHOT_INTERVAL_S": "2.5",
        "SNAPSHOTD_WORKFLOWS__ORDER__KEEP_SNAPSHOTS": "4",
        "SNAPSHOTD_WORKFLOWS__Billing__REDUCER": "last_by_key",
    }
    config = load_config(write(tmp_path, FULL), env)
    assert config.socket.path == "/tmp/other.sock"
    assert config.socket.allowed_uids == (0, 1000)
    assert config.instances["default"].policy.snapshot_threshold is None
    assert config.instances["default"].policy.keep_snapshots == 3
    assert config.instances["Scratch"].queue_capacity == 7
    assert config.instances["pg"].journal.startswith("postgresql://")
    assert config.instances["pg"].policy.snapshot_interval_s == 2.5
    assert config.workflows["order"].overrides["keep_snapshots"] == 4
    assert config.workflows["order"].overrides["reducer"] == "merge_patch"
    assert config.workflows["billing"].overrides == {"reducer": "last_by_key"}


def test_workflow_queue_capacity_is_accepted_but_the_instance_value_bounds_the_queue(
    tmp_path: Path,
) -> None:
    text = FULL + "queue_capacity = 3\n"
    config = load_config(
        write(tmp_path, text), {"SNAPSHOTD_WORKFLOWS__BILLING__QUEUE_CAPACITY": "9"}
    )
    order = config.workflows["order"]
    assert order.queue_capacity == 3
    assert "queue_capacity" not in order.overrides
    assert config.workflows["billing"].queue_capacity == 9
    assert config.workflows["billing"].overrides == {}
    assert config.instances["default"].queue_capacity == 5
    with pytest.raises(ConfigError, match=r"^workflows\.order\.queue_capacity \(from "):
        load_config(write(tmp_path, text), {"SNAPSHOTD_WORKFLOWS__ORDER__QUEUE_CAPACITY": "-1"})


def test_env_only_instances_replace_the_implicit_default() -> None:
    config = load_config(None, {"SNAPSHOTD_INSTANCES__MEM__JOURNAL": "memory:"})
    assert list(config.instances) == ["mem"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sockets]\n", r"^sockets: unknown key"),
        ("[socket]\npathh = 'x'\n", r"^socket\.pathh: unknown key"),
        ("[instances.default]\nthreshold = 1\n", r"^instances\.default\.threshold: unknown key"),
        ("[workflows.w]\njournal = 'memory:'\n", r"^workflows\.w\.journal: unknown key"),
        ("instances = 3\n", r"^instances: must be a table"),
        ("[instances]\ndefault = 3\n", r"^instances\.default: must be a table"),
        ("[instances.x]\nsnapshot_threshold = 5\n", r"^instances\.x\.journal: missing"),
        ("[socket\n", r"invalid TOML"),
    ],
)
def test_file_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), {})


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml"):
        load_config(str(tmp_path / "nope.toml"), {})


BAD_VALUES = [
    ("instances.default.snapshot_threshold", "0", 'positive integer or "infinity"'),
    ("instances.default.snapshot_threshold", "-3", 'positive integer or "infinity"'),
    ("instances.default.snapshot_threshold", "'never'", 'positive integer or "infinity"'),
    ("instances.default.snapshot_threshold", "1.5", 'positive integer or "infinity"'),
    ("instances.default.snapshot_threshold", "true", 'positive integer or "infinity"'),
    ("instances.default.keep_snapshots", "1", "integer >= 2"),
    ("instances.default.snapshot_interval_s", "-1", ">= 0"),
    ("instances.default.snapshot_interval_s", "'soon'", ">= 0"),
    ("instances.default.safety_ttl_s", "0", "> 0"),
    ("instances.default.queue_capacity", "0", "positive integer"),
    ("instances.default.max_snapshot_bytes", "0", "positive integer"),
    ("instances.default.journal", "'mysql://x'", "'memory:', 'fs:PATH'"),
    ("instances.default.journal", "'fs:'", "'memory:', 'fs:PATH'"),
    ("instances.default.reducer", "''", "non-empty string"),
    ("workflows.order.savepoint_upgrade", "'upgrade'", "MODULE:FUNCTION"),
    ("workflows.order.keep_snapshots", "0", "integer >= 2"),
    ("workflows.order.queue_capacity", "0", "positive integer"),
    ("workflows.order.queue_capacity", "'big'", "positive integer"),
    ("socket.mode", "'rw-------'", "octal"),
    ("socket.mode", "600", "octal"),
    ("socket.mode", "'0999'", "octal"),
    ("socket.allowed_uids", "[]", "non-empty list"),
    ("socket.allowed_uids", "[-1]", "user ids"),
    ("socket.max_frame_bytes", "0", "positive integer"),
    ("socket.max_connections", "'many'", "positive integer"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES)
def test_each_invalid_file_value_names_its_key(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    table, _, leaf = key.rpartition(".")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"[{table}]\n{leaf} = {value}\n"), {})
    message = str(info.value)
    assert message.startswith(f"{key}: ") and expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("var", "value", "key"),
    [
        (
            "SNAPSHOTD_INSTANCES__DEFAULT__SNAPSHOT_THRESHOLD",
            "lots",
            "instances.default.snapshot_threshold",
        ),
        ("SNAPSHOTD_INSTANCES__DEFAULT__KEEP_SNAPSHOTS", "1", "instances.default.keep_snapshots"),
        ("SNAPSHOTD_INSTANCES__NEW__QUEUE_CAPACITY", "x", "instances.new.queue_capacity"),
        (
            "SNAPSHOTD_WORKFLOWS__ORDER__SNAPSHOT_INTERVAL_S",
            "-5",
            "workflows.order.snapshot_interval_s",
        ),
        ("SNAPSHOTD_SOCKET_MODE", "777x", "socket.mode"),
        ("SNAPSHOTD_SOCKET_ALLOWED_UIDS", "1000,abc", "socket.allowed_uids"),
    ],
)
def test_each_invalid_env_value_names_its_key_and_variable(var: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {var: value})
    message = str(info.value)
    assert message.startswith(f"{key} (from {var}): ")


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ("SNAPSHOTD_SOCKET_COLOR", r"^socket\.color \(from SNAPSHOTD_SOCKET_COLOR\): unknown key"),
        ("SNAPSHOTD_INSTANCES__DEFAULT__COLOR", r"^instances\.default\.color .*unknown key"),
        ("SNAPSHOTD_WORKFLOWS__W__JOURNAL", r"^workflows\.w\.journal .*unknown key"),
        ("SNAPSHOTD_INSTANCES_DEFAULT_JOURNAL", r"SNAPSHOTD_INSTANCES__<NAME>__<KEY>"),
        ("SNAPSHOTD_WORKFLOWS__W", r"SNAPSHOTD_WORKFLOWS__<NAME>__<KEY>"),
    ],
)
def test_unknown_env_keys_are_errors(var: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {var: "1"})


def test_an_unknown_snapshotd_variable_is_a_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SNAPSHOTD_FOO: unknown setting"):
        load_config(None, {"SNAPSHOTD_FOO": "1"})


@pytest.mark.parametrize("spelling", ["Infinity", "INFINITY", "inf"])
def test_threshold_infinity_is_spelled_exactly(tmp_path: Path, spelling: str) -> None:
    env = {"SNAPSHOTD_INSTANCES__DEFAULT__SNAPSHOT_THRESHOLD": spelling}
    with pytest.raises(ConfigError, match="snapshot_threshold"):
        load_config(None, env)


def test_connection_and_instance_keys_of_this_revision(tmp_path: Path) -> None:
    text = (
        "[socket]\nidle_timeout_s = 0\nmax_buffered_bytes = 1000\n\n"
        '[instances.default]\njournal = "postgresql://u@db/x"\naudit_retention_s = 0\n'
        'slice_lease_s = 2.5\nlisten_dsn = "postgresql://u@primary:5432/x"\n\n'
    )
    config = load_config(write(tmp_path, text), {})
    assert config.socket.idle_timeout_s == 0
    assert config.socket.max_buffered_bytes == 1000
    default = config.instances["default"]
    assert default.audit_retention_s == 0
    assert default.slice_lease_s == 2.5
    assert default.listen_dsn == "postgresql://u@primary:5432/x"


def test_defaults_of_this_revision() -> None:
    config = load_config(None, {})
    assert config.socket.idle_timeout_s == 300
    assert config.socket.max_buffered_bytes == 64 * 1024 * 1024
    assert config.socket.max_connections == 1024
    default = config.instances["default"]
    assert default.audit_retention_s == 2_592_000
    assert default.slice_lease_s == 10
    assert default.listen_dsn is None


def test_new_keys_from_the_environment() -> None:
    config = load_config(
        None,
        {
            "SNAPSHOTD_SOCKET_IDLE_TIMEOUT_S": "2.5",
            "SNAPSHOTD_SOCKET_MAX_BUFFERED_BYTES": "4096",
            "SNAPSHOTD_INSTANCES__DEFAULT__AUDIT_RETENTION_S": "60",
            "SNAPSHOTD_INSTANCES__DEFAULT__LISTEN_DSN": "postgresql://a/x",
        },
    )
    assert config.socket.idle_timeout_s == 2.5
    assert config.socket.max_buffered_bytes == 4096
    assert config.instances["default"].audit_retention_s == 60
    assert config.instances["default"].listen_dsn == "postgresql://a/x"


@pytest.mark.parametrize("value", ["0", "1", "1.5", "1800"])
def test_snapshot_interval_zero_or_at_least_one_second(value: str) -> None:
    env = {"SNAPSHOTD_INSTANCES__DEFAULT__SNAPSHOT_INTERVAL_S": value}
    assert load_config(None, env).instances["default"].policy.snapshot_interval_s == float(value)


@pytest.mark.parametrize("value", ["1e-9", "0.5", "0.999"])
def test_snapshot_interval_below_one_second_is_refused(value: str) -> None:
    # 1e-9 was accepted and made an idle daemon sweep without pause, burning a core.
    env = {"SNAPSHOTD_INSTANCES__DEFAULT__SNAPSHOT_INTERVAL_S": value}
    with pytest.raises(ConfigError, match=r"^instances\.default\.snapshot_interval_s .*>= 1"):
        load_config(None, env)


NEW_BAD_VALUES = [
    ("socket.idle_timeout_s", "-1", ">= 0"),
    ("socket.idle_timeout_s", "'soon'", ">= 0"),
    ("socket.max_buffered_bytes", "0", "positive integer"),
    ("instances.default.audit_retention_s", "-1", ">= 0"),
    ("instances.default.slice_lease_s", "0", "> 0"),
    ("instances.default.listen_dsn", "'mysql://x'", "postgresql://"),
    ("instances.default.listen_dsn", "['postgresql://a/x']", "postgresql://"),
    ("instances.default.listen_dsn", "'postgresql://a:0/x'", "invalid PostgreSQL DSN"),
]


@pytest.mark.parametrize(("key", "value", "expected"), NEW_BAD_VALUES)
def test_each_invalid_new_value_names_its_key(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    table, _, leaf = key.rpartition(".")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"[{table}]\n{leaf} = {value}\n"), {})
    message = str(info.value)
    assert message.startswith(f"{key}: ") and expected in message


BAD_DSNS = [
    ("postgresql://u:secret@db:99999/x", "port 99999 is out of range"),
    ("postgresql://u:secret@db:0/x", "port 0 is out of range"),
    ("postgresql://u:secret@db:abc/x", "port 'abc' is not a number"),
    ("postgresql://u:secret@[::1/x", "no closing ']'"),
    ("postgresql://u:secret@[::1]x/x", "expected ':PORT'"),
    ("postgresql://u:secret@a:5432,b:x/x", "port 'x' is not a number"),
    ("postgresql://u:secret@db/x?sslmode=bogus", "sslmode 'bogus' is not one of"),
    ("postgresql://u:secret@db/x?target_session_attrs=any-writer", "target_session_attrs"),
    ("postgresql://u:secret@db/x?schema=Bad-Name", "schema 'Bad-Name'"),
    ("postgresql://u:secret@db/x?port=70000", "port 70000 is out of range"),
    ("postgresql://u:secret@db x/x", "spaces"),
    ("postgresql://u:secret@db$1/x", "is not a host name"),
]


@pytest.mark.parametrize(("dsn", "expected"), BAD_DSNS)
def test_bad_dsns_fail_with_one_message_naming_the_key(dsn: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"SNAPSHOTD_INSTANCES__DEFAULT__JOURNAL": dsn})
    message = str(info.value)
    assert message.startswith("instances.default.journal (from SNAPSHOTD_INSTANCES__DEFAULT__")
    assert expected in message
    assert "secret" not in message


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:p%40ss@db:5432/x?schema=snap&sslmode=verify-full",
        "postgres://db/x",
        "postgresql:///x?host=/var/run/postgresql",
        "postgresql://u@h1:5432,h2:5433/x?target_session_attrs=read-write",
        "postgresql://u@[::1]:5432/x",
        "postgresql://u@[fe80::1%25eth0]/x",
        "postgresql://u@my_db-1.example/x?prepared_statements=false&application_name=sd",
    ],
)
def test_good_dsns_pass(dsn: str) -> None:
    env = {"SNAPSHOTD_INSTANCES__DEFAULT__JOURNAL": dsn}
    assert load_config(None, env).instances["default"].journal == dsn


def test_a_bad_dsn_stops_serve_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "snapshotd.toml"
    config.write_text(
        f'[socket]\npath = "{tmp_path / "s.sock"}"\n\n'
        '[instances.default]\njournal = "postgresql://u:pw@localhost:99999/x"\n'
    )
    done = serve_to_exit(config)
    assert done.returncode != 0
    assert "instances.default.journal: invalid PostgreSQL DSN: port 99999" in done.stderr
    assert "Traceback" not in done.stderr
    assert "pw" not in done.stderr


@pytest.mark.parametrize(
    "var",
    [
        "SNAPSHOTD_SERVICE_HOST",
        "SNAPSHOTD_SERVICE_PORT",
        "SNAPSHOTD_SERVICE_PORT_HTTP",
        "SNAPSHOTD_PORT",
        "SNAPSHOTD_PORT_8080_TCP",
        "SNAPSHOTD_PORT_8080_TCP_PROTO",
        "SNAPSHOTD_PORT_8080_TCP_PORT",
        "SNAPSHOTD_PORT_8080_TCP_ADDR",
        "SNAPSHOTD_DSN",
        "SNAPSHOTD_MIGRATIONS",
    ],
)
def test_kubernetes_service_links_and_non_config_variables_are_ignored(var: str) -> None:
    assert load_config(None, {var: "tcp://10.0.0.1:8080"}).instances["default"].journal


@pytest.mark.parametrize(
    "var", ["SNAPSHOTD_SERVICEHOST", "SNAPSHOTD_SERVICE_NAME", "SNAPSHOTD_PORTS"]
)
def test_other_unknown_variables_are_still_errors(var: str) -> None:
    with pytest.raises(ConfigError, match=f"^{var}: unknown setting"):
        load_config(None, {var: "1"})
