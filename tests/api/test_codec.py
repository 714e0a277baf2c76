"""The NDJSON codec: request parsing rules and response encoding, without sockets."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshotd.api import codec
from snapshotd.api.dispatch import MAX_LABEL_CHARS, label
from snapshotd.domain.validation import INT64_MAX, INT64_MIN


def test_parse_defaults_instance() -> None:
    req = codec.parse(b'{"op": "ping", "id": 7}')
    assert req == {"op": "ping", "id": 7, "instance": "default"}


def test_parse_keeps_given_instance_and_unknown_fields() -> None:
    req = codec.parse(b'{"op": "snapshot", "run": "r", "instance": "mem", "extra": [1]}')
    assert req["instance"] == "mem"
    assert req["extra"] == [1]
    assert "id" not in req


@pytest.mark.parametrize(
    "line",
    [b"not json", b"[1, 2]", b"42", b'"op"', b"null", b"{", b'{"op": "ping"} x'],
)
def test_not_an_object_is_answered_with_null_id(line: bytes) -> None:
    with pytest.raises(codec.FrameError) as info:
        codec.parse(line)
    assert info.value.code == "bad_request"
    assert info.value.request_id is None
    assert info.value.answer


def test_invalid_utf8_is_bad_request() -> None:
    with pytest.raises(codec.FrameError) as info:
        codec.parse(b'{"op": "ping", "id": 1, "x": "\xff\xfe"}')
    assert info.value.answer
    assert info.value.request_id is None


def test_lone_surrogate_escape_is_bad_request() -> None:
    with pytest.raises(codec.FrameError):
        codec.parse(b'{"op": "ping", "id": 1, "x": "\\ud800"}')


@pytest.mark.parametrize("bad_id", ["true", "1.5", "[1]", '{"a": 1}'])
def test_id_must_be_string_int_or_null(bad_id: str) -> None:
    with pytest.raises(codec.FrameError, match="id must be") as info:
        codec.parse(f'{{"op": "ping", "id": {bad_id}}}'.encode())
    assert info.value.request_id is None
    assert info.value.answer


@pytest.mark.parametrize("request_id", ["abc", 0, -3, None])
def test_valid_ids(request_id: object) -> None:
    req = codec.parse(orjson.dumps({"op": "ping", "id": request_id}))
    assert req.get("id") == request_id


def test_op_must_be_a_string_and_keeps_id() -> None:
    with pytest.raises(codec.FrameError, match="op must be a string") as info:
        codec.parse(b'{"id": "x", "op": 3}')
    assert info.value.request_id == "x"
    assert info.value.answer


def test_fire_and_forget_frame_error_is_not_answered() -> None:
    with pytest.raises(codec.FrameError) as info:
        codec.parse(b'{"run": "r"}')
    assert not info.value.answer


def test_instance_must_be_a_string() -> None:
    with pytest.raises(codec.FrameError, match="instance"):
        codec.parse(b'{"id": 1, "op": "ping", "instance": 5}')


@pytest.mark.parametrize(
    "literal", ["9223372036854775808", "-9223372036854775809", "18446744073709551616", "1" * 30]
)
def test_event_data_integers_outside_int64_are_rejected(literal: str) -> None:
    line = (
        f'{{"id": 1, "op": "append", "run": "r", "events": [{{"type": "t", "data": {literal}}}]}}'
    )
    with pytest.raises(codec.FrameError, match="signed 64 bits") as info:
        codec.parse(line.encode())
    assert info.value.request_id == 1


def test_int64_bounds_and_float_notation_are_accepted() -> None:
    data = {"max": INT64_MAX, "min": INT64_MIN}
    line = orjson.dumps({"id": 1, "op": "append", "events": [{"type": "t", "data": data}]})
    assert codec.parse(line)["events"][0]["data"] == data
    big_float = b'{"id": 1, "op": "append", "events": [{"type": "t", "data": 1e20}]}'
    assert codec.parse(big_float)["events"][0]["data"] == 1e20


def test_nul_in_event_data_is_rejected_naming_the_event() -> None:
    events = b'[{"type": "t", "data": 1}, {"type": "t", "data": {"k": "a\\u0000"}}]'
    line = b'{"id": 2, "op": "append", "events": ' + events + b"}"
    with pytest.raises(codec.FrameError, match=r"events\[1\]\.data"):
        codec.parse(line)


def test_payload_fields_of_other_ops_are_checked() -> None:
    line = b'{"id": 3, "op": "savepoint_save", "state": {"n": 99999999999999999999}}'
    with pytest.raises(codec.FrameError, match="state"):
        codec.parse(line)


def test_snapshot_hot_path_skips_the_payload_walk() -> None:
    req = codec.parse(b'{"op": "snapshot", "run": "r", "lease": "a"}')
    assert req == {"op": "snapshot", "run": "r", "lease": "a", "instance": "default"}


def test_encode_result_passes_fragments_through_and_uses_utc_z() -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    line = codec.encode_result(9, {"events": [orjson.Fragment(b'{"seq":1}')], "at": when})
    assert line.endswith(b"\n")
    assert orjson.loads(line) == {
        "id": 9,
        "ok": True,
        "result": {"events": [{"seq": 1}], "at": "2024-05-01T12:00:00Z"},
    }


def test_encode_error_shape() -> None:
    assert orjson.loads(codec.encode_error(None, "too_large", "big")) == {
        "id": None,
        "ok": False,
        "error": {"code": "too_large", "message": "big"},
    }


def test_encode_request_omits_missing_id() -> None:
    assert orjson.loads(codec.encode_request("snapshot", None, run="r")) == {
        "op": "snapshot",
        "run": "r",
    }
    assert orjson.loads(codec.encode_request("ping", 4)) == {"op": "ping", "id": 4}


def test_decode_response_rejects_non_responses() -> None:
    with pytest.raises(ValueError, match="not a snapshotd response"):
        codec.decode_response(b'{"op": "ping"}')


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text().filter(lambda s: "\x00" not in s),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5).filter(lambda s: "\x00" not in s), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_valid_payloads_round_trip_exactly(data: object) -> None:
    line = orjson.dumps({"id": 1, "op": "append", "events": [{"type": "t", "data": data}]})
    assert codec.parse(line)["events"][0]["data"] == data


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_frame_errors(raw: bytes) -> None:
    try:
        req = codec.parse(raw)
    except codec.FrameError as exc:
        assert exc.code == "bad_request"
    else:
        assert type(req["op"]) is str


@pytest.mark.parametrize(
    ("line", "instance"),
    [
        (b"not json", "-"),
        (b'{"op": 1, "instance": 5}', "-"),
        (b'{"op": 1}', "default"),
        (b'{"op": 1, "instance": "zz"}', "zz"),
        (b'{"op": "append", "instance": "b", "data": 99999999999999999999}', "b"),
    ],
)
def test_frame_errors_name_the_instance_when_it_could_be_read(line: bytes, instance: str) -> None:
    with pytest.raises(codec.FrameError) as info:
        codec.parse(line)
    assert info.value.instance == instance


def test_overlong_unknown_instance_names_are_not_metric_labels() -> None:
    assert label("zz") == "zz"
    assert label("x" * MAX_LABEL_CHARS) == "x" * MAX_LABEL_CHARS
    assert label("x" * (MAX_LABEL_CHARS + 1)) == "-"
