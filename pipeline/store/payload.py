"""What one commit sends the ``commit.lua`` script, by name.

:class:`CommitPayload` packs itself into ONE msgpack argument: redis-py encodes each
argument of a command in Python, about half a µs apiece, so a batch's heads and log
chunks as arguments would cost the client more than msgpack takes for all of them. It
packs as a flat array in the order of its fields, which is the order in which
``commit.lua`` names them (``local offsets, dropped, ... = p[1], p[2], ...``): Redis's
cmsgpack builds one Lua table per array and one Lua string per string, so a few long
flat arrays unpack faster than a table per key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import msgpack


@dataclass(slots=True)
class CommitPayload:
    """One batch's writes for a partition (every list flat: pairs and triples in a row)."""

    #: ``[topic, offset, ...]``: the last input offset applied per topic; the script
    #: refuses (returns 0, writing nothing) when Redis holds one as high already
    offsets: list[Any] = field(default_factory=list)
    #: event log keys to delete (sessions past the reopen grace)
    dropped: list[str] = field(default_factory=list)
    #: ``[event log key, chunk, ...]``: one chunk per session per batch, its new log
    #: items as JSON lines (:func:`log_chunk`), appended to the session's list
    logs: list[Any] = field(default_factory=list)
    #: ``[keyid, state blob, ...]``: key states written (the ``states`` hash)
    states: list[Any] = field(default_factory=list)
    #: keyids whose state is deleted
    gone: list[str] = field(default_factory=list)
    #: ``[due_ms, keyid, ...]``: deadlines set (due_ms in decimal: Lua formats numbers slowly)
    dues: list[str] = field(default_factory=list)
    #: keyids whose deadline is removed
    undue: list[str] = field(default_factory=list)
    #: keyids whose index entry may have changed, and their new entries ("" = none)
    checked: list[str] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)
    #: every key not in ``checked`` keeps its index entry as the commit that wrote this
    #: token left it; Redis holding another token, the script refuses with RECHECK,
    #: writing nothing ("" = every key of the commit is in ``checked``)
    since: str = ""
    #: messages appended to the outbox, in order
    outgoing: list[bytes] = field(default_factory=list)
    #: messages trimmed from the outbox head (sent and acknowledged)
    acked: int = 0
    #: ``[session ref, end_ms, record, ...]``: closed sessions for the history
    history: list[Any] = field(default_factory=list)
    #: history entries that ended before this are forgotten
    history_min_ms: int = 0
    #: at most this many history entries per partition
    history_max: int = 0
    #: the writer's wall time, kept with the stream clock (0: not given)
    at_ms: int = 0

    def pack(self) -> bytes:
        """The script's ``ARGV[4]``. ``use_bin_type=False``: Redis's cmsgpack reads bytes
        as the old raw type."""
        packed: bytes = msgpack.packb([getattr(self, name) for name in _ORDER], use_bin_type=False)
        return packed


#: the fields in the order the script reads them
_ORDER = tuple(f.name for f in fields(CommitPayload))


def log_chunk(items: list[bytes]) -> bytes:
    """One batch's log items of a session (each one JSON value, as orjson writes it: no
    raw newline) as JSON lines, the unit the store appends."""
    return b"\n".join(items)


def split_log(chunks: list[bytes]) -> list[bytes]:
    """The log items of a session's chunks, in order."""
    return b"\n".join(chunks).split(b"\n") if chunks else []
