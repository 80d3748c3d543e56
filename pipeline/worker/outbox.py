"""Outgoing messages and how they wait in the outbox.

Everything a batch sends - closed sessions, dead letters, re-routed events - is
written to the partition's outbox (a Redis list) in the same atomic step as the
state change, then sent, and trimmed from the outbox once the broker has
acknowledged it. After a crash the next owner of the partition sends the outbox
again: delivery is at-least-once, and every message carries a key that makes a
repeat recognisable (``session_id`` + ``revision``; a dead letter's topic,
partition, offset and index; a re-routed event's origin header).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

SESSION = "s"
DEAD_LETTER = "d"
FORWARD = "f"
UPDATE = "u"  # live view of an open session: sent directly, never through the outbox

#: header on a re-routed event: ``<topic>:<partition>:<offset>:<index>`` of its origin
ORIGIN_HEADER = "sz-origin"


@dataclass(slots=True)
class Outgoing:
    kind: str  # SESSION, DEAD_LETTER or FORWARD
    key: bytes | None
    value: bytes
    timestamp_ms: int
    partition: int | None = None
    origin: str | None = None

    def encode(self) -> bytes:
        head = orjson.dumps(
            [self.kind, None if self.key is None else self.key.decode("latin-1"),
             self.partition, self.timestamp_ms, self.origin]
        )
        return head + b"\n" + self.value

    @classmethod
    def decode(cls, blob: bytes) -> Outgoing:
        head, _, value = blob.partition(b"\n")
        kind, key, partition, timestamp_ms, origin = orjson.loads(head)
        return cls(kind, None if key is None else key.encode("latin-1"), value, timestamp_ms,
                   partition, origin)
