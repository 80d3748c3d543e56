"""The in-memory twin of the Redis store: same contract, plain dicts.

Used by unit tests and offline replays. States are kept serialized, as in
Redis, so a test through this store also proves the state round-trips.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.core.event import SessionKey
from pipeline.core.session import KeyState
from pipeline.exceptions import FencedError, StaleStateError
from pipeline.store import codec
from pipeline.store.base import Claim, Commit, latest
from pipeline.store.keys import keyid


@dataclass
class _Shard:
    epoch: int = 0
    token: str = ""
    clock_ms: int = 0
    clock_at_ms: int = 0
    offsets: dict[str, int] = field(default_factory=dict)
    states: dict[str, bytes] = field(default_factory=dict)
    due: dict[str, int] = field(default_factory=dict)
    outbox: list[bytes] = field(default_factory=list)
    history: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)  # (sid, project)


class MemoryStore:
    """:class:`~pipeline.store.base.SessionStore` in memory."""

    def __init__(self) -> None:
        self.shards: dict[int, _Shard] = {}
        self.revision_marks: dict[tuple[str, str], int] = {}  # (session_id, project) -> revision
        self.revision_at: dict[tuple[str, str], int] = {}  # when each mark was last written (ms)
        self.revision_retention_ms = 30 * 86_400_000

    async def claim(self, partition: int) -> Claim:
        shard = self.shards.setdefault(partition, _Shard())
        shard.epoch += 1
        return Claim(partition, shard.epoch, dict(shard.offsets), shard.clock_ms, shard.token,
                     shard.clock_at_ms)

    def release(self, partition: int) -> None:
        pass

    async def revisions(self, refs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        marks = self.revision_marks
        return {ref: marks[ref] for ref in refs if ref in marks}

    async def raise_revisions(self, marks: Mapping[tuple[str, str], int], now_ms: int) -> None:
        if not marks:
            return
        held, at = self.revision_marks, self.revision_at
        for ref, revision in marks.items():
            if revision > held.get(ref, 0):
                held[ref] = revision
            at[ref] = now_ms
        for ref in [r for r, ms in at.items() if ms <= now_ms - self.revision_retention_ms]:
            del held[ref], at[ref]

    async def load(
        self, partition: int, keys: Iterable[SessionKey], due_until_ms: int | None, due_limit: int
    ) -> list[KeyState]:
        shard = self.shards.get(partition, _Shard())
        wanted = [keyid(k) for k in keys]
        if due_until_ms is not None and due_limit > 0:
            due = sorted((d, kid) for kid, d in shard.due.items() if d <= due_until_ms)
            seen = set(wanted)
            wanted += [kid for _, kid in due[:due_limit] if kid not in seen]
        return [
            codec.decode(shard.states[kid]) for kid in wanted if kid in shard.states
        ]

    async def load_all(self, partition: int, limit: int) -> list[KeyState] | None:
        shard = self.shards.get(partition, _Shard())
        if len(shard.states) > limit:
            return None
        return [codec.decode(blob) for blob in shard.states.values()]

    async def has_due(self, partition: int, until_ms: int) -> bool:
        shard = self.shards.get(partition)
        return shard is not None and any(d <= until_ms for d in shard.due.values())

    async def commit(self, partition: int, epoch: int, commit: Commit) -> bool:
        shard = self.shards.get(partition)
        if shard is None:  # never claimed: no epoch is current, as in Redis
            raise FencedError(f"partition {partition}: epoch {epoch} is stale (never claimed)")
        if shard.epoch < epoch:
            raise StaleStateError(f"partition {partition}: epoch {shard.epoch} < {epoch}: writes lost")
        if shard.epoch != epoch:
            raise FencedError(f"partition {partition}: epoch {epoch} is stale (now {shard.epoch})")
        if commit.token and shard.token not in commit.expect:
            raise StaleStateError(f"partition {partition}: commit token {shard.token!r} is not one "
                                  "this worker wrote last")
        for topic, offset in commit.offsets.items():
            if shard.offsets.get(topic, -1) >= offset:
                if commit.token:
                    shard.token = commit.token
                return False
        shard.offsets.update(commit.offsets)
        for key, state in commit.states.items():
            kid = keyid(key)
            if state is None:
                shard.states.pop(kid, None)
            else:
                # a right-sized copy: orjson's result keeps its 4 KiB write buffer
                shard.states[kid] = bytes(memoryview(codec.encode(state)))
                for session in state.sessions():
                    session.take_log()  # the full state above holds events and ids
        for key in itertools.chain(commit.states, (k for k in commit.due_ms if k not in commit.states)):
            due = commit.due_ms.get(key)
            if due is None:
                shard.due.pop(keyid(key), None)
            else:
                shard.due[keyid(key)] = due
        del shard.outbox[: commit.acked]
        shard.outbox.extend(commit.outgoing)
        for sid, project, end_ms, record in commit.history:
            shard.history[(sid, project)] = (end_ms, record)
        shard.clock_ms = commit.clock_ms
        if commit.at_ms > 0:
            shard.clock_at_ms = commit.at_ms
        if commit.token:
            shard.token = commit.token
        return True

    async def outbox(self, partition: int) -> list[bytes]:
        return list(self.shards.get(partition, _Shard()).outbox)

    def _open_records(self) -> list[dict[str, Any]]:
        records = []
        for shard in self.shards.values():
            for blob in shard.states.values():
                state = codec.decode(blob)
                if state.open is not None:
                    records.append(state.open.to_record())
        return records

    async def open_sessions(
        self, project: str | None = None, user_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        records = [
            r
            for r in self._open_records()
            if (project is None or r["project"] == project) and (user_id is None or r["user_id"] == user_id)
        ]
        records.sort(key=lambda r: r["start"], reverse=True)
        return records[:limit]

    async def get_session(self, session_id: str, project: str | None = None) -> dict[str, Any] | None:
        found = [
            r for r in self._open_records()
            if r["session_id"] == session_id and (project is None or r["project"] == project)
        ]
        return latest(found, "start")

    async def closed_sessions(
        self, since_ms: int | None = None, until_ms: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        found = [
            (end_ms, record)
            for shard in self.shards.values()
            for end_ms, record in shard.history.values()
            if (since_ms is None or end_ms >= since_ms) and (until_ms is None or end_ms <= until_ms)
        ]
        found.sort(key=lambda item: item[0], reverse=True)
        return [orjson.loads(record) for _, record in found[:limit]]

    async def get_closed_session(
        self, session_id: str, project: str | None = None
    ) -> dict[str, Any] | None:
        found = [
            orjson.loads(record)
            for shard in self.shards.values()
            for (sid, held_project), (_, record) in shard.history.items()
            if sid == session_id and (project is None or held_project == project)
        ]
        return latest(found, "end")

    async def close(self) -> None:
        pass
