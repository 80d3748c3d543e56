"""Where the report reads sessions: any store with the four query methods below
(:class:`~pipeline.store.redis.RedisStore`, :class:`~pipeline.store.memory.MemoryStore`).

Open sessions are the live state; closed ones come from the bounded history the
worker writes as sessions close (``SESSIONIZER_HISTORY_RETENTION``,
``SESSIONIZER_HISTORY_MAX_SESSIONS``). Both are SPEC section 4 records. A session
found in both (closed, then reopened by a late event) is shown as it is now: open.

The history is ordered by a session's *end*, the report by its *start*. Every
session ends at or after it starts, so the sessions read from the newest end
down to some end E hold every session that started after E: the listing reads
deeper (4 times as many each round) until it has ``limit`` matches that started
after the oldest end read, or the history is exhausted, or it has read
``scan_limit`` closed sessions (then the answer says ``partial``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.core.timefmt import parse_timestamp_ms
from pipeline.report.params import ListQuery

Record = dict[str, Any]

_FIRST_READ = 200


class ReportStore(Protocol):
    async def open_sessions(
        self, project: str | None = None, user_id: str | None = None, limit: int = 1000
    ) -> list[Record]: ...

    async def get_session(self, session_id: str, project: str | None = None) -> Record | None: ...

    async def closed_sessions(
        self, since_ms: int | None = None, until_ms: int | None = None, limit: int = 1000
    ) -> list[Record]: ...

    async def get_closed_session(
        self, session_id: str, project: str | None = None
    ) -> Record | None: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one request may read, and how long after its start a session can end."""

    max_open: int = 10_000
    scan_limit: int = 5_000
    #: max session duration plus inactivity timeout (the largest of any project)
    longest_session_ms: int = 86_400_000 + 300_000


@dataclass(slots=True)
class Found:
    sessions: list[Record]
    has_more: bool = False  # more sessions match than were returned
    partial: bool = False  # a read limit was reached: older matches may be missing


def start_ms(record: Record) -> int:
    return parse_timestamp_ms(record["start"])


def end_ms(record: Record) -> int:
    return parse_timestamp_ms(record["end"])


def error_count(record: Record) -> int:
    return int(record.get("type_counts", {}).get("error", 0))


def summary(record: Record) -> Record:
    """A list row: the record without its events and data, with ``online`` and ``error_count``."""
    row = {k: v for k, v in record.items() if k not in ("events", "data")}
    row.setdefault("close_reason", None)
    row["online"] = record["status"] == "open"
    row["error_count"] = error_count(record)
    return row


def detail(record: Record) -> Record:
    """The whole record, with ``online`` and ``error_count``."""
    full = dict(record)
    full.setdefault("close_reason", None)
    full["online"] = record["status"] == "open"
    full["error_count"] = error_count(record)
    return full


def _newest_first(records: Iterable[tuple[int, Record]]) -> list[Record]:
    ordered = sorted(records, key=lambda item: (item[0], item[1]["session_id"]), reverse=True)
    return [record for _, record in ordered]


class SessionData:
    """Report queries over a store."""

    def __init__(self, store: ReportStore, limits: Limits | None = None) -> None:
        self.store = store
        self.limits = limits or Limits()

    async def _open(self, project: str | None, user: str | None) -> tuple[list[Record], bool]:
        # every open session (up to max_open): a store's limit is not "newest first"
        cap = self.limits.max_open
        records = await self.store.open_sessions(project=project, user_id=user, limit=cap)
        return records, len(records) >= cap

    async def find(self, query: ListQuery) -> Found:
        """Sessions that started in the query's range, open and closed, newest start first."""
        since, until = query.since_ms, query.until_ms

        def in_range(started: int) -> bool:
            return (since is None or started >= since) and (until is None or started <= until)

        open_records, partial = await self._open(query.project, query.user)
        found = {
            (r["project"], r["session_id"]): (start_ms(r), r) for r in open_records
        }
        opened = {key: item for key, item in found.items() if in_range(item[0])}
        closed: dict[tuple[str, str], tuple[int, Record]] = {}
        if not query.active_only:
            closed, scan_partial = await self._closed_newest(query, set(found), in_range)
            partial = partial or scan_partial
        rows = _newest_first([*opened.values(), *closed.values()])
        end = query.offset + query.limit
        return Found(rows[query.offset : end], has_more=len(rows) > end, partial=partial)

    async def _closed_newest(
        self, query: ListQuery, skip: set[tuple[str, str]], in_range: Callable[[int], bool]
    ) -> tuple[dict[tuple[str, str], tuple[int, Record]], bool]:
        """Matching closed sessions, enough of them to hold the newest ``limit + 1``."""
        wanted = query.offset + query.limit + 1
        high = None if query.until_ms is None else query.until_ms + self.limits.longest_session_ms
        read = min(self.limits.scan_limit, max(_FIRST_READ, 4 * wanted))
        while True:
            records = await self.store.closed_sessions(
                since_ms=query.since_ms, until_ms=high, limit=read
            )
            matching: dict[tuple[str, str], tuple[int, Record]] = {}
            for r in records:
                key = (r["project"], r["session_id"])
                if key in skip or key in matching:
                    continue
                if query.project is not None and r["project"] != query.project:
                    continue
                if query.user is not None and r["user_id"] != query.user:
                    continue
                started = start_ms(r)
                if in_range(started):
                    matching[key] = (started, r)
            if len(records) < read:  # the whole history in range was read
                return matching, False
            oldest_end = min(end_ms(r) for r in records)
            if sum(1 for started, _ in matching.values() if started > oldest_end) >= wanted:
                return matching, False
            if read >= self.limits.scan_limit:
                return matching, True
            read = min(self.limits.scan_limit, read * 4)

    async def get(self, session_id: str, project: str | None = None) -> Record | None:
        """One session, open (live) or else closed (history); in ``project``, or without
        one in any project (session ids are unique within a project only)."""
        record = await self.store.get_session(session_id, project)
        if record is None:
            record = await self.store.get_closed_session(session_id, project)
        return record

    async def started_between(
        self, project: str | None, since_ms: int, until_ms: int
    ) -> tuple[list[Record], bool]:
        """Every session (up to the read limits) that started in ``[since_ms, until_ms]``,
        and whether a read limit was reached."""
        open_records, partial = await self._open(project, None)
        scan = self.limits.scan_limit
        closed = await self.store.closed_sessions(
            since_ms=since_ms, until_ms=until_ms + self.limits.longest_session_ms, limit=scan
        )
        partial = partial or len(closed) >= scan
        found: dict[tuple[str, str], Record] = {}
        for r in [*open_records, *closed]:
            key = (r["project"], r["session_id"])
            if key in found or (project is not None and r["project"] != project):
                continue
            if since_ms <= start_ms(r) <= until_ms:
                found[key] = r
        return list(found.values()), partial
