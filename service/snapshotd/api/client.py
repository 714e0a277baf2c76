"""Client library for the snapshotd socket: ``Client`` (blocking) and ``AsyncClient`` (anyio).

Both keep one connection open and reuse it. Every op has a typed method
(``client.load(run, snapshot_id=...)``, see ``client_ops``); ``call(op, **fields)``
is the untyped form. Both return the op's ``result``. Every failure is a
``ClientError`` carrying a SPEC error code: the daemon's own error, or
``unavailable`` when no daemon answers (no socket, connection lost, timeout; when
the connection was lost after a request was written, ``details["outcome"]`` is
``"unknown"``, as for the daemon's own interrupted appends). ``send`` is
fire-and-forget: requests are buffered and written in batches (pipelined), so an
application can report thousands of snapshot hints per second cheaply.
Responses arrive in request order, so a call reads lines until its own id.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import SocketStream

from snapshotd.api import codec
from snapshotd.api.client_ops import OpMethods, Result

SEND_BUFFER_BYTES = 64 * 1024
_RECEIVE_BYTES = 256 * 1024


class ClientError(Exception):
    """A request failed; ``code`` is the protocol error code of SPEC section 2.

    ``message`` says why; ``details`` holds the error object's other fields
    (``last_seq`` of an append conflict, ``outcome`` of an append whose commit was
    interrupted). No daemon to answer is ``unavailable``.
    """

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


@dataclass
class _AppendRetry:
    """What each failed attempt of an append retried with ``expected_seq`` means.

    ``unavailable`` and a broken connection are retried (with a doubling delay);
    once an attempt may have been written (``outcome: unknown``, or the connection
    broke before the answer), a ``conflict`` whose ``last_seq`` is ``expected_seq``
    plus the batch size means that attempt was written: it counts as success.
    """

    expected_seq: int
    batch: int
    attempts: int
    delay_s: float
    tried: int = 0
    uncertain: bool = False

    def settle(self, error: ClientError) -> int | None:
        """The last seq when ``error`` shows an earlier attempt was written, None to
        try again after ``delay()``; raises ``error`` when retrying cannot help."""
        self.tried += 1
        written = self.expected_seq + self.batch
        if error.code == "conflict" and self.uncertain and error.details.get("last_seq") == written:
            return written
        if error.code != "unavailable":
            raise error
        if error.details.get("outcome") == "unknown":
            self.uncertain = True
        if self.tried >= self.attempts:
            raise error
        return None

    def delay(self) -> float:
        return float(self.delay_s * 2.0 ** (self.tried - 1))


def _append_fields(
    run: str,
    events: Sequence[dict[str, Any]],
    expected_seq: int,
    lease: str | None,
    instance: str | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {"run": run, "events": list(events), "expected_seq": expected_seq}
    if lease is not None:
        fields["lease"] = lease
    if instance is not None:
        fields["instance"] = instance
    return fields


class _Lines:
    """Splits received bytes into response lines."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line


def _unavailable(path: str, exc: BaseException, *, sent: bool) -> ClientError:
    """No daemon answered at ``path``; ``sent``: a request may have reached it."""
    what = "connection to snapshotd lost" if sent else "cannot reach snapshotd"
    return ClientError(
        "unavailable",
        f"{what} at {path}: {type(exc).__name__}: {exc}",
        {"outcome": "unknown"} if sent else None,
    )


def _outcome(response: dict[str, Any], request_id: int) -> tuple[bool, Any]:
    """(done, result) for one response line while waiting for ``request_id``."""
    if response.get("id") == request_id:
        if response["ok"]:
            return True, response.get("result")
    elif response.get("id") is not None or response["ok"]:
        return False, None  # an answer to some earlier request: not ours
    # Our error, or an id-less one (too_large, bad_request) about our frame.
    error = response.get("error") or {}
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    raise ClientError(str(error.get("code", "internal")), str(error.get("message", "")), details)


class Client(OpMethods[Result]):
    """Blocking client. Not thread-safe: use one per thread.

    ``path`` is the daemon's socket; ``timeout`` bounds each socket operation
    (``unavailable`` past it). After a broken connection the next call
    reconnects (a call is never retried, since an append might have been applied).
    """

    def __init__(self, path: str, *, timeout: float | None = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lines = _Lines()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._next_id = 0

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                raise _unavailable(self.path, exc, sent=False) from exc
            self._sock = sock
            self._lines = _Lines()
        return self._sock

    def _broken(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._pending.clear()
        self._pending_bytes = 0

    def _write(self, data: bytes) -> None:
        sock = self._connect()
        try:
            sock.sendall(data)
        except OSError as exc:
            self._broken()
            raise _unavailable(self.path, exc, sent=True) from exc

    def flush(self) -> None:
        """Write buffered fire-and-forget requests."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._write(data)

    def send(self, op: str, **fields: Any) -> None:
        """Queue a fire-and-forget request (no id, no response); written in batches."""
        line = codec.encode_request(op, None, **fields)
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= SEND_BUFFER_BYTES:
            self.flush()

    def call(self, op: str, **fields: Any) -> Any:
        """Send a request and wait for its result; ClientError for an error response."""
        self._next_id += 1
        request_id = self._next_id
        self._pending.append(codec.encode_request(op, request_id, **fields))
        self.flush()
        sock = self._connect()
        while True:
            line = self._lines.next_line()
            if line is None:
                try:
                    data = sock.recv(_RECEIVE_BYTES)
                except OSError as exc:
                    self._broken()
                    raise _unavailable(self.path, exc, sent=True) from exc
                if not data:
                    self._broken()
                    raise _unavailable(
                        self.path, ConnectionError("closed by the daemon"), sent=True
                    )
                self._lines.feed(data)
                continue
            try:
                done, result = _outcome(codec.decode_response(line), request_id)
            except ClientError as exc:
                if exc.code == "too_large":
                    self._broken()  # the daemon closes the connection after too_large
                raise
            if done:
                return result

    def append_retrying(
        self,
        run: str,
        events: Sequence[dict[str, Any]],
        *,
        expected_seq: int,
        lease: str | None = None,
        instance: str | None = None,
        attempts: int = 5,
        delay_s: float = 0.2,
    ) -> int:
        """Append ``events`` once, retrying through outages; returns the new last seq.

        Safe to retry because of ``expected_seq`` (the last seq the caller saw): an
        attempt answered ``unavailable`` with ``outcome: unknown`` (or cut off by a
        broken connection) may have been written, and a later ``conflict`` whose
        ``last_seq`` is ``expected_seq + len(events)`` then means it was. Raises
        ClientError otherwise (``conflict``: another writer appended first), or
        the last error after ``attempts`` tries. Blocks while it waits between tries.
        """
        fields = _append_fields(run, events, expected_seq, lease, instance)
        retry = _AppendRetry(expected_seq, len(events), attempts, delay_s)
        while True:
            try:
                return int(self.call("append", **fields)["last_seq"])
            except ClientError as exc:
                written = retry.settle(exc)
                if written is not None:
                    return written
            time.sleep(retry.delay())

    def _op(self, op: str, fields: dict[str, Any]) -> Result:
        result: Result = self.call(op, **fields)
        return result

    def close(self) -> None:
        """Flush pending requests (best effort) and close the connection."""
        try:
            self.flush()
        except ClientError:
            pass
        finally:
            self._broken()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(OpMethods[Awaitable[Result]]):
    """The anyio counterpart of ``Client`` (same semantics; one task at a time)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stream: SocketStream | None = None
        self._lines = _Lines()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._next_id = 0

    async def _connect(self) -> SocketStream:
        if self._stream is None:
            try:
                self._stream = await anyio.connect_unix(self.path)
            except OSError as exc:
                raise _unavailable(self.path, exc, sent=False) from exc
            self._lines = _Lines()
        return self._stream

    async def _broken(self) -> None:
        stream, self._stream = self._stream, None
        self._pending.clear()
        self._pending_bytes = 0
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _write(self, data: bytes) -> None:
        stream = await self._connect()
        try:
            await stream.send(data)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            await self._broken()
            raise _unavailable(self.path, exc, sent=True) from exc

    async def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            await self._write(data)

    async def send(self, op: str, **fields: Any) -> None:
        line = codec.encode_request(op, None, **fields)
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= SEND_BUFFER_BYTES:
            await self.flush()

    async def call(self, op: str, **fields: Any) -> Any:
        self._next_id += 1
        request_id = self._next_id
        self._pending.append(codec.encode_request(op, request_id, **fields))
        await self.flush()
        stream = await self._connect()
        while True:
            line = self._lines.next_line()
            if line is None:
                try:
                    data = await stream.receive(_RECEIVE_BYTES)
                except (
                    OSError,
                    anyio.EndOfStream,
                    anyio.BrokenResourceError,
                    anyio.ClosedResourceError,
                ) as exc:
                    await self._broken()
                    raise _unavailable(self.path, exc, sent=True) from exc
                self._lines.feed(data)
                continue
            try:
                done, result = _outcome(codec.decode_response(line), request_id)
            except ClientError as exc:
                if exc.code == "too_large":
                    await self._broken()
                raise
            if done:
                return result

    async def append_retrying(
        self,
        run: str,
        events: Sequence[dict[str, Any]],
        *,
        expected_seq: int,
        lease: str | None = None,
        instance: str | None = None,
        attempts: int = 5,
        delay_s: float = 0.2,
    ) -> int:
        """``Client.append_retrying`` for anyio."""
        fields = _append_fields(run, events, expected_seq, lease, instance)
        retry = _AppendRetry(expected_seq, len(events), attempts, delay_s)
        while True:
            try:
                return int((await self.call("append", **fields))["last_seq"])
            except ClientError as exc:
                written = retry.settle(exc)
                if written is not None:
                    return written
            await anyio.sleep(retry.delay())

    def _op(self, op: str, fields: dict[str, Any]) -> Awaitable[Result]:
        return self.call(op, **fields)

    async def aclose(self) -> None:
        try:
            await self.flush()
        except ClientError:
            pass
        finally:
            await self._broken()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
