"""Outgoing messages survive the outbox encoding byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.worker.outbox import DEAD_LETTER, FORWARD, SESSION, Outgoing


def roundtrip(message: Outgoing) -> Outgoing:
    blob = message.encode()
    assert isinstance(blob, bytes)
    return Outgoing.decode(blob)


@pytest.mark.parametrize(
    "message",
    [
        Outgoing(SESSION, b"0123456789abcdef", b'{"session_id":"0123456789abcdef"}', 1_764_237_600_000),
        Outgoing(DEAD_LETTER, None, b'{"error":"invalid_json"}', 0),
        Outgoing(DEAD_LETTER, b"", b"", 5),
        Outgoing(FORWARD, b"alice", b'{"type":"usage"}', 42, partition=3, origin="events:0:17:"),
        Outgoing(FORWARD, b"bob", b"[1]", 42, partition=0, origin="events:2:9:4"),
    ],
    ids=["session", "key-none", "empty-key-and-value", "forward-single", "forward-batch-element"],
)
def test_round_trip_keeps_every_field(message: Outgoing) -> None:
    assert roundtrip(message) == message


def test_key_none_and_empty_key_stay_distinct() -> None:
    assert roundtrip(Outgoing(SESSION, None, b"v", 1)).key is None
    assert roundtrip(Outgoing(SESSION, b"", b"v", 1)).key == b""


def test_origin_none_and_set() -> None:
    assert roundtrip(Outgoing(FORWARD, b"k", b"v", 1, partition=1)).origin is None
    assert roundtrip(Outgoing(FORWARD, b"k", b"v", 1, partition=1, origin="t:1:2:")).origin == "t:1:2:"


def test_binary_values_and_keys_with_newlines_and_nul_bytes() -> None:
    every_byte = bytes(range(256))
    message = Outgoing(
        DEAD_LETTER, b"\n\x00\xff key \r\n", b"\n\n" + every_byte + b"\n", 7, origin="a\nb"
    )
    back = roundtrip(message)
    assert back == message
    assert back.value == b"\n\n" + every_byte + b"\n"


def test_non_utf8_key_round_trips() -> None:
    key = b"\xc3\x28\xa0\xa1\xff\xfe"  # not valid UTF-8
    assert roundtrip(Outgoing(DEAD_LETTER, key, b"x", 1)).key == key


@given(
    kind=st.sampled_from([SESSION, DEAD_LETTER, FORWARD]),
    key=st.none() | st.binary(max_size=64),
    value=st.binary(max_size=512),
    timestamp_ms=st.integers(min_value=0, max_value=2**53),
    partition=st.none() | st.integers(min_value=0, max_value=10_000),
    origin=st.none() | st.text(max_size=40),
)
def test_round_trip_any_message(
    kind: str, key: bytes | None, value: bytes, timestamp_ms: int, partition: int | None, origin: str | None
) -> None:
    message = Outgoing(kind, key, value, timestamp_ms, partition=partition, origin=origin)
    assert roundtrip(message) == message
