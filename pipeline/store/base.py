"""The store contract: what the worker needs from wherever live state is kept.

Two backends implement it: :class:`pipeline.store.redis.RedisStore` (the real
one) and :class:`pipeline.store.memory.MemoryStore` (its in-memory twin, for
unit tests and offline replays). Both are driven through the same tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.core.event import SessionKey
from pipeline.core.session import KeyState, Session


@dataclass(slots=True)
class Claim:
    """A worker's hold on a partition: its fencing epoch and where to resume."""

    partition: int
    epoch: int
    offsets: dict[str, int]  # topic -> last applied offset (resume at +1)
    clock_ms: int
    token: str = ""  # the last commit's token ("" before the first commit)
    clock_at_ms: int = 0  # wall time (epoch ms) when clock_ms was committed; 0: unknown


@dataclass(slots=True)
class Commit:
    """Everything one batch changes, written in one atomic step."""

    states: Mapping[SessionKey, KeyState | None]  # None: the key has nothing left
    #: each key's deadline (None: none); it may name keys not in ``states`` (their
    #: deadline alone is written: a key looked at when due, found not due yet)
    due_ms: Mapping[SessionKey, int | None]
    offsets: Mapping[str, int]  # topic -> last offset this batch applied
    clock_ms: int
    outgoing: list[bytes] = field(default_factory=list)  # appended to the outbox, in order
    acked: int = 0  # messages at the outbox head the broker has acknowledged (trimmed)
    dropped: list[tuple[SessionKey, Session]] = field(default_factory=list)  # sessions past the grace
    # closed session records for the history: (session_id, project, end_ms, record)
    history: list[tuple[str, str, int, bytes]] = field(default_factory=list)
    #: written with the commit, so the next one can tell the store is where it left it
    #: (None: no check, no token)
    token: str | None = None
    #: the tokens the store may hold now: the writer's last known one, and those of
    #: commits whose reply was lost (they may or may not have applied). Holding any
    #: other, the store lost writes, and refuses (StaleStateError).
    expect: tuple[str, ...] = ()
    #: the writer's wall time (epoch ms): a new owner's stream clock goes on from
    #: ``clock_ms`` as of then (0: not recorded)
    at_ms: int = 0


def latest(records: Iterable[dict[str, Any]], by: str) -> dict[str, Any] | None:
    """The record a lookup by session id alone answers with when several projects use
    the id: the latest by ``by`` (``start`` for open sessions, ``end`` for closed ones),
    then by project name; None when there is none."""
    return max(records, key=lambda r: (r[by], r["project"]), default=None)


class SessionStore(Protocol):
    async def claim(self, partition: int) -> Claim:
        """Take a partition: bump its epoch (fencing out the previous owner)."""
        ...

    async def load(
        self, partition: int, keys: Iterable[SessionKey], due_until_ms: int | None, due_limit: int
    ) -> list[KeyState]:
        """States of ``keys`` plus of up to ``due_limit`` keys due by ``due_until_ms``."""
        ...

    async def load_all(self, partition: int, limit: int) -> list[KeyState] | None:
        """Every key state of the partition, when it holds at most ``limit`` of them;
        None (nothing loaded) when it holds more."""
        ...

    async def has_due(self, partition: int, until_ms: int) -> bool:
        """Whether any key of the partition falls due by ``until_ms`` (nothing is loaded)."""
        ...

    async def commit(self, partition: int, epoch: int, commit: Commit) -> bool:
        """Apply atomically. False: the offsets were already applied (nothing done).
        Raises :class:`~pipeline.exceptions.FencedError` when the epoch is stale, and
        :class:`StaleStateError` when the store is behind what was written (its epoch
        lower than ``epoch``, or its token none of ``commit.expect``). Both the commit
        and the already-applied answer leave ``commit.token`` as the store's token."""
        ...

    async def outbox(self, partition: int) -> list[bytes]:
        """Closed records written but not yet acknowledged by the broker."""
        ...

    async def revisions(self, refs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The highest revision recorded (:meth:`raise_revisions`) for each
        (``session_id``, ``project``) of a client-chosen session id; absent ones left out."""
        ...

    async def raise_revisions(self, marks: Mapping[tuple[str, str], int], now_ms: int) -> None:
        """Record revisions given to client-chosen session ids (each kept only when higher
        than the one recorded), dated ``now_ms`` (wall time): partitions share them,
        whichever owns the id now. Marks not written for the retention are forgotten."""
        ...

    async def open_sessions(
        self, project: str | None = None, user_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        ...

    async def get_session(self, session_id: str, project: str | None = None) -> dict[str, Any] | None:
        """The open session with this id (in ``project``; without one, in any project:
        the latest started when several projects use the id)."""
        ...

    async def close(self) -> None:
        ...
