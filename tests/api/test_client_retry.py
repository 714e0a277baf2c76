"""The client's append retry helper (SPEC section 2, honest append outcomes), against a
scripted peer on a real unix socket: each request gets the next scripted answer."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from snapshotd.api.client import AsyncClient, Client, ClientError

UNKNOWN = {"code": "unavailable", "message": "lost", "outcome": "unknown"}
DOWN = {"code": "unavailable", "message": "down"}


def conflict(last_seq: int) -> dict[str, Any]:
    return {"code": "conflict", "message": "moved", "last_seq": last_seq}


class Scripted:
    """Answers each request line with the next scripted error (or result)."""

    def __init__(self, path: Path, answers: list[dict[str, Any]]) -> None:
        self.path = str(path)
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._server.accept()
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                request = orjson.loads(line)
                self.requests.append(request)
                answer = self.answers.pop(0)
                reply: dict[str, Any] = {"id": request["id"]}
                if "last_seq" in answer and "code" not in answer:
                    reply |= {"ok": True, "result": answer}
                else:
                    reply |= {"ok": False, "error": answer}
                conn.sendall(orjson.dumps(reply) + b"\n")

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Any]:
    made: list[Scripted] = []

    def start(*answers: dict[str, Any]) -> Scripted:
        made.append(Scripted(tmp_path / "s.sock", list(answers)))
        return made[-1]

    yield start
    for peer in made:
        peer.close()


EVENTS = [{"type": "t", "data": 1}, {"type": "t", "data": 2}]


def test_unknown_outcome_then_matching_conflict_counts_as_written(script: Any) -> None:
    peer = script(UNKNOWN, conflict(7))
    with Client(peer.path) as client:
        assert client.append_retrying("r", EVENTS, expected_seq=5, delay_s=0) == 7
    assert [r["expected_seq"] for r in peer.requests] == [5, 5]
    assert peer.requests[0]["events"] == EVENTS


def test_unavailable_is_retried_until_it_goes_through(script: Any) -> None:
    peer = script(DOWN, DOWN, {"last_seq": 7})
    with Client(peer.path) as client:
        assert client.append_retrying("r", EVENTS, expected_seq=5, lease="L", delay_s=0) == 7
    assert all(r["lease"] == "L" for r in peer.requests)


def test_a_conflict_without_an_uncertain_attempt_is_raised(script: Any) -> None:
    peer = script(DOWN, conflict(7))
    with Client(peer.path) as client, pytest.raises(ClientError) as caught:
        client.append_retrying("r", EVENTS, expected_seq=5, delay_s=0)
    assert caught.value.code == "conflict"


def test_a_conflict_at_another_seq_is_raised(script: Any) -> None:
    peer = script(UNKNOWN, conflict(9))
    with Client(peer.path) as client, pytest.raises(ClientError) as caught:
        client.append_retrying("r", EVENTS, expected_seq=5, delay_s=0)
    assert caught.value.details == {"last_seq": 9}


def test_gives_up_after_its_attempts(script: Any) -> None:
    peer = script(DOWN, DOWN, DOWN)
    with Client(peer.path) as client, pytest.raises(ClientError) as caught:
        client.append_retrying("r", EVENTS, expected_seq=5, attempts=3, delay_s=0)
    assert caught.value.code == "unavailable"
    assert len(peer.requests) == 3


def test_other_errors_are_not_retried(script: Any) -> None:
    peer = script({"code": "stale_lease", "message": "no"})
    with Client(peer.path) as client, pytest.raises(ClientError):
        client.append_retrying("r", EVENTS, expected_seq=5, delay_s=0)
    assert len(peer.requests) == 1


@pytest.mark.anyio
async def test_async_client_retries_the_same_way(script: Any) -> None:
    peer = script(UNKNOWN, DOWN, conflict(7))
    async with AsyncClient(peer.path) as client:
        written = await client.append_retrying(
            "r", EVENTS, expected_seq=5, instance="default", delay_s=0
        )
    assert written == 7
    assert all(r["instance"] == "default" for r in peer.requests)
