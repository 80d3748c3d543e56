"""Dead-letter records (SPEC section 6): a rejection, ready to serialize."""

from __future__ import annotations

import base64

from pipeline.core.event import Rejection
from pipeline.core.fit import cut_bytes

__all__ = ["dead_letter_record"]


def dead_letter_record(
    rej: Rejection, *, topic: str, timestamp_ms: int, key: bytes | None,
    max_value_bytes: int | None = None,
) -> dict[str, object]:
    """The dead-letter record for ``rej``, a JSON-ready dict.

    Fields:

    - ``error``: the rejection code (``invalid_json``, ``invalid_event``, ...);
      ``detail``: what was wrong, in a sentence.
    - ``topic``, ``partition``, ``offset``: where the rejected record was read.
    - ``timestamp``: the rejected input record's Kafka timestamp (its arrival
      time), as integer epoch milliseconds; not the time it was rejected.
    - ``key``: the input record's key as UTF-8 text, or ``null`` when it had
      none; when the key is not valid UTF-8 it is base64 (standard alphabet,
      padded) and ``"key_encoding": "base64"`` is added.
    - ``value``: the rejected bytes as UTF-8 text, base64 with
      ``"value_encoding": "base64"`` when they are not valid UTF-8, or ``null``
      for a record without a value. For one event of a batch record the value
      is that element alone (compact JSON), not the whole batch.
    - ``index``: only for one event of a batch record: its position in the array.
    - ``value_truncated`` / ``key_truncated``: present and ``true`` when the value (or
      the key) was longer than ``max_value_bytes`` and was cut to that many bytes
      (never inside a UTF-8 character), so a dead letter fits the broker's limit.
    """
    record: dict[str, object] = {
        "error": str(rej.code),
        "detail": rej.detail,
        "topic": topic,
        "partition": rej.partition,
        "offset": rej.offset,
        "timestamp": timestamp_ms,
    }
    _put_text(record, "key", key, max_value_bytes)
    _put_text(record, "value", rej.raw, max_value_bytes)
    if rej.index is not None:
        record["index"] = rej.index
    return record


def _put_text(record: dict[str, object], name: str, raw: bytes | None, limit: int | None) -> None:
    if raw is None:
        record[name] = None
        return
    if limit is not None:
        raw, cut = cut_bytes(bytes(raw), limit)
        if cut:
            record[f"{name}_truncated"] = True
    try:
        record[name] = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        record[name] = base64.b64encode(raw).decode("ascii")
        record[f"{name}_encoding"] = "base64"
