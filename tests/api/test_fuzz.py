"""A bounded, seeded protocol fuzzer against a real daemon over its socket (issue 11).

Each example opens a connection and sends a batch of frames: valid requests of every
op with mutated fields, random bytes, byte-level mutations, deep nesting and huge
numbers, while other connections hold half lines or sit idle. Asserted: the daemon
never dies, every frame whose id survives by construction is answered exactly once
with an error code of the SPEC (never ``internal``) or ``ok``, every response is a
well-formed line, ``ping`` on another connection keeps answering, and RSS stays
bounded. Derandomized: the same frames every run; the volume is printed.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.daemon import DaemonProcess, read_line

SPEC_CODES = frozenset(
    {
        "bad_request",
        "unknown_op",
        "unknown_instance",
        "not_found",
        "conflict",
        "stale_lease",
        "too_large",
        "unavailable",
        "corrupt",
    }
)
MAX_FRAME = 262_144
IDLE_S = 1.5
RSS_LIMIT_KB = 250 * 1024
EXAMPLES = 70

RUNS = ("f1", "f2")
INSTANCES = ("default", "default", "mem", "nope")
DEPTHS = (63, 64, 65, 66, 252, 253, 254, 990, 1020, 1030, 3000)
HUGE = (b"1e400", b"-1e999", b"9" * 400, b"18446744073709551616", b"-9223372036854775809")

Frame = tuple[str, Any]


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[DaemonProcess]:
    process = DaemonProcess(config="")
    root = process.root
    process.config_path.write_text(
        f'[socket]\npath = "{root / "s.sock"}"\nmax_frame_bytes = {MAX_FRAME}\n'
        f"max_connections = 64\nidle_timeout_s = {IDLE_S}\nmax_buffered_bytes = 1048576\n\n"
        f'[instances.default]\njournal = "fs:{root / "data"}"\nsnapshot_threshold = 5\n\n'
        '[instances.mem]\njournal = "memory:"\n'
    )
    process.start()
    try:
        yield process
    finally:
        process.cleanup()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    run = draw(st.sampled_from(RUNS))
    value = draw(json_values)
    op, fields = draw(
        st.sampled_from(
            [
                ("ping", {}),
                ("status", {}),
                ("create_run", {"run": run, "workflow": "w", "version": "v"}),
                ("append", {"run": run, "events": [{"type": "t", "data": value}]}),
                ("snapshot", {"run": run}),
                ("snapshot_now", {"run": run, "force": True}),
                ("load", {"run": run, "limit": 3}),
                ("list_snapshots", {"run": run}),
                ("verify", {"run": run}),
                ("audit", {"limit": 5}),
                ("set_version", {"run": run, "version": "v"}),
                (
                    "savepoint_init",
                    {"run": run, "start_ms": 0, "interval_ms": 10, "entities": {"e": value}},
                ),
                ("savepoint_save", {"run": run, "entity": "e", "timestamp_ms": 5, "state": value}),
                ("savepoint_ack", {"run": run, "entity": "e", "timestamp_ms": 7}),
                ("savepoint_load", {"run": run, "resume": True}),
                ("list_runs", {"after": run, "limit": 2}),
                ("load", {"run": run, "snapshot_id": "0190e8a0-0000-7000-8000-000000000000"}),
                ("snapshot_now", {"run": run, "label": "x", "kind": "safety"}),
                ("frobnicate", {}),
            ]
        )
    )
    request: dict[str, Any] = {"op": op, "instance": draw(st.sampled_from(INSTANCES)), **fields}
    mutation = draw(st.sampled_from(["none", "none", "drop", "add", "replace"]))
    keys = [key for key in request if key != "op"]
    if mutation == "drop" and keys:
        del request[draw(st.sampled_from(keys))]
    elif mutation == "add":
        request[draw(st.sampled_from(["zz", "lease", "limit", "events"]))] = draw(json_values)
    elif mutation == "replace" and keys:
        request[draw(st.sampled_from(keys))] = draw(json_values)
    return request


frames: st.SearchStrategy[Frame] = st.one_of(
    st.tuples(st.just("request"), requests()),
    st.tuples(st.just("forget"), requests()),
    st.tuples(st.just("bytes"), st.binary(max_size=300)),
    st.tuples(
        st.just("mutated"),
        st.tuples(requests(), st.integers(0, 10_000), st.sampled_from(list(b'{}[]",:\\x\x00\xff'))),
    ),
    st.tuples(st.just("deep"), st.tuples(st.sampled_from(DEPTHS), st.booleans())),
    st.tuples(st.just("huge"), st.sampled_from(HUGE)),
)


def encode(kind: str, data: Any, request_id: int) -> tuple[bytes, bool]:
    """The line for a frame and whether its id survives by construction."""
    if kind in ("request", "forget"):
        body = dict(data)
        if kind == "request":
            body["id"] = request_id
        return json.dumps(body, allow_nan=False).encode(), kind == "request"
    if kind == "bytes":
        return data.replace(b"\n", b" "), False
    if kind == "mutated":
        request, position, byte = data
        line = bytearray(json.dumps({**request, "id": f"m{request_id}"}).encode())
        line[position % len(line)] = byte if byte != ord("\n") else ord(" ")
        return bytes(line), False
    if kind == "deep":
        levels, in_data = data
        if in_data:  # event data sits at level 4
            inner = b"[" * (levels - 3) + b"0" + b"]" * (levels - 3)
            return (
                b'{"op":"append","run":"f1","events":[{"type":"t","data":'
                + inner
                + b'}],"id":%d}' % request_id,
                True,
            )
        inner = b"[" * (levels - 2) + b"0" + b"]" * (levels - 2)
        return (
            b'{"op":"savepoint_save","id":%d,"run":"f2","entity":"e","timestamp_ms":9,"state":{"a":%s}}'
            % (
                request_id,
                inner,
            ),
            True,
        )
    return (
        b'{"op":"append","id":%d,"run":"f1","events":[{"type":"t","data":[%s]}]}'
        % (request_id, data),
        True,
    )


def check_response(line: bytes) -> dict[str, Any]:
    reply = orjson.loads(line)
    assert type(reply) is dict and type(reply.get("ok")) is bool, line[:200]
    assert "id" in reply, line[:200]
    if not reply["ok"]:
        error = reply["error"]
        assert error["code"] in SPEC_CODES, line[:300]
        assert isinstance(error["message"], str)
    return reply


def ping(process: DaemonProcess) -> None:
    with process.client(timeout=10) as client:
        assert client.call("ping") == {"pong": True}


volume: Counter[str] = Counter()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    batch=st.lists(frames, min_size=10, max_size=60),
    half_lines=st.lists(st.integers(1, 150_000), max_size=8),
)
def fuzz_one_batch(fuzzed: DaemonProcess, batch: list[Frame], half_lines: list[int]) -> None:
    holders = []
    try:
        for size in half_lines:
            holder = fuzzed.raw()
            holder.setblocking(False)
            with contextlib.suppress(OSError):
                holder.send(b'{"op": "ping", "pad": "' + b"h" * size)
            holders.append(holder)
        expected: set[int] = set()
        lines = []
        for index, (kind, data) in enumerate(batch):
            request_id = 1_000_000 + index
            line, answered = encode(kind, data, request_id)
            lines.append(line)
            if answered:
                expected.add(request_id)
            volume[kind] += 1
        with fuzzed.raw(timeout=30) as sock:
            sock.sendall(b"\n".join(lines) + b'\n{"op": "ping", "id": "end"}\n')
            ping(fuzzed)
            seen: Counter[Any] = Counter()
            buffer = bytearray()
            while True:
                line = read_line(sock, buffer)
                assert line, "the daemon closed the fuzzed connection"
                reply = check_response(line)
                assert not (not reply["ok"] and reply["error"]["code"] == "internal")
                if reply["id"] == "end":
                    break
                seen[reply["id"]] += 1
        for request_id in expected:
            assert seen[request_id] == 1, (request_id, batch[request_id - 1_000_000])
        assert all(count == 1 for key, count in seen.items() if isinstance(key, int))
        volume["examples"] += 1
    finally:
        for holder in holders:
            holder.close()
    ping(fuzzed)
    assert fuzzed.alive()


def test_fuzz_the_socket(fuzzed: DaemonProcess) -> None:
    fuzz_one_batch(fuzzed=fuzzed)
    # Many idle connections: those past max_connections get one `unavailable` line,
    # the idle timeout then closes the rest and new clients are served again.
    idle = []
    try:
        for _ in range(70):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(fuzzed.socket_path)
            sock.settimeout(IDLE_S * 4)
            idle.append(sock)
        replies = [sock.recv(1000) for sock in idle]
        assert sum(b'"unavailable"' in reply for reply in replies) >= 6
        for sock, reply in zip(idle, replies, strict=True):
            if not reply:
                continue
            assert reply.count(b"\n") == 1
            assert sock.recv(10) == b""
    finally:
        for sock in idle:
            sock.close()
    ping(fuzzed)
    rss_kb = fuzzed.rss_kb("VmHWM")
    assert rss_kb < RSS_LIMIT_KB
    log = fuzzed.log()
    assert "Traceback" not in log and "request_failed" not in log
    print(f"fuzz volume: {dict(volume)}, peak RSS {rss_kb // 1024} MB")
