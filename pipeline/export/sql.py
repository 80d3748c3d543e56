"""The exporter's tables, on SQLite or PostgreSQL.

``<table>`` (default ``sessions``): one row per session, primary key
(``project``, ``session_id``); a row is replaced only by a record with a higher
``revision``. ``sessionizer_offsets``: per (table, topic, partition) the next
Kafka offset to read, written in the same transaction as the rows it covers.

URLs: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (stdlib
``sqlite3``), ``postgresql://user:password@host:port/dbname`` (``psycopg``: install
the extra ``sessionizer-pipeline[export-postgres]``).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from pipeline.exceptions import ConfigError
from pipeline.export.consumer import SessionRecord, newest

__all__ = ["COLUMNS", "OFFSETS_TABLE", "SessionTable", "open_table"]

OFFSETS_TABLE = "sessionizer_offsets"
#: the row's columns, in order (``record`` is the whole record as JSON)
COLUMNS = ("project", "session_id", "revision", "user_id", "user_name", "start", "end",
           "duration_ms", "close_reason", "event_count", "has_error", "record")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_SQLITE_TYPES = {
    "project": "TEXT NOT NULL", "session_id": "TEXT NOT NULL", "revision": "INTEGER NOT NULL",
    "user_id": "TEXT", "user_name": "TEXT", "start": "TEXT NOT NULL", "end": "TEXT NOT NULL",
    "duration_ms": "INTEGER NOT NULL", "close_reason": "TEXT", "event_count": "INTEGER NOT NULL",
    "has_error": "INTEGER NOT NULL", "record": "TEXT NOT NULL",
}
_POSTGRES_TYPES = {
    **_SQLITE_TYPES, "revision": "integer NOT NULL", "start": "timestamptz NOT NULL",
    "end": "timestamptz NOT NULL", "duration_ms": "bigint NOT NULL",
    "event_count": "integer NOT NULL", "has_error": "boolean NOT NULL", "record": "jsonb NOT NULL",
}


#: the PostgreSQL advisory lock taken while the tables are created ("session" in ASCII)
SCHEMA_LOCK = 0x73657373696F6E


def _quoted(name: str) -> str:
    return f'"{name}"'


class SessionTable:
    """One connection to the database, with the session table and the offsets table."""

    def __init__(self, conn: Any, dialect: str, table: str = "sessions") -> None:
        if not _NAME.fullmatch(table):
            raise ConfigError(
                f"table name {table!r} is not a plain SQL name: use letters, digits and _ "
                "(at most 63, not starting with a digit)"
            )
        self.conn, self.dialect, self.table = conn, dialect, table
        # the consumer's rebalance callback (asking for positions) may run on the
        # client's I/O thread: one transaction at a time on the connection
        self._lock = threading.Lock()
        postgres = dialect == "postgresql"
        mark = "%s" if postgres else "?"
        cols = ", ".join(_quoted(c) for c in COLUMNS)
        values = ", ".join(f"{mark}::jsonb" if postgres and c == "record" else mark for c in COLUMNS)
        updates = ", ".join(f"{_quoted(c)} = excluded.{_quoted(c)}" for c in COLUMNS[2:])
        self._upsert = (
            f"INSERT INTO {_quoted(table)} ({cols}) VALUES ({values}) "
            f"ON CONFLICT (project, session_id) DO UPDATE SET {updates} "
            f"WHERE excluded.revision > {_quoted(table)}.revision"
        )
        bigger = "GREATEST" if postgres else "MAX"
        self._offsets = (
            f"INSERT INTO {OFFSETS_TABLE} (table_name, topic, kafka_partition, next_offset) "
            f"VALUES ({mark}, {mark}, {mark}, {mark}) "
            "ON CONFLICT (table_name, topic, kafka_partition) DO UPDATE SET next_offset = "
            f"{bigger}({OFFSETS_TABLE}.next_offset, excluded.next_offset)"
        )
        self._mark = mark

    # -- schema ------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the tables and the index on ``start`` when missing."""
        types = _POSTGRES_TYPES if self.dialect == "postgresql" else _SQLITE_TYPES
        columns = ", ".join(f"{_quoted(c)} {types[c]}" for c in COLUMNS)
        statements = [
            f"CREATE TABLE IF NOT EXISTS {_quoted(self.table)} ({columns}, "
            "PRIMARY KEY (project, session_id))",
            f"CREATE INDEX IF NOT EXISTS {_quoted(self.table + '_start')} "
            f"ON {_quoted(self.table)} (start)",
            f"CREATE TABLE IF NOT EXISTS {OFFSETS_TABLE} (table_name TEXT NOT NULL, "
            "topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, next_offset BIGINT NOT NULL, "
            "PRIMARY KEY (table_name, topic, kafka_partition))",
        ]
        with self._transaction() as cur:
            if self.dialect == "postgresql":
                # CREATE ... IF NOT EXISTS is not safe against itself: two exporters that
                # start together both see no table and one fails on the catalog's unique
                # index. One schema change at a time (the lock ends with the transaction).
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in statements:
                cur.execute(statement)

    # -- reading and writing ----------------------------------------------------------
    def positions(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """The next offset to read per partition, for those this table has applied any of."""
        wanted = set(partitions)
        with self._transaction() as cur:
            cur.execute(
                f"SELECT kafka_partition, next_offset FROM {OFFSETS_TABLE} "
                f"WHERE table_name = {self._mark} AND topic = {self._mark}", (self.table, topic),
            )
            rows = cur.fetchall()
        return {int(p): int(o) for p, o in rows if int(p) in wanted}

    def apply(self, sessions: list[SessionRecord], topic: str, positions: Mapping[int, int]) -> int:
        """Write the sessions (each kept only over a lower revision) and the positions, in
        one transaction. Returns the rows inserted or replaced."""
        rows = [self._row(s) for s in newest(sessions)]  # each session once, its newest
        with self._transaction() as cur:
            changed = 0
            if rows:
                cur.executemany(self._upsert, rows)
                changed = max(0, cur.rowcount)
            cur.executemany(self._offsets, [(self.table, topic, p, o) for p, o in sorted(positions.items())])
        return changed

    def _row(self, s: SessionRecord) -> tuple[Any, ...]:
        record = orjson.dumps(s.record).decode()
        if self.dialect == "postgresql":
            start: Any = s.start
            end: Any = s.end
            has_error: Any = s.has_error
        else:
            start, end, has_error = s.record["start"], s.record["end"], int(s.has_error)
        return (s.project, s.session_id, s.revision, s.user_id, s.user_name, start, end,
                s.duration_ms, s.close_reason, s.event_count, has_error, record)

    def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a query (``?`` or ``%s`` placeholders, as the dialect wants) and return its rows."""
        with self._transaction() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def _transaction(self) -> Any:
        return _Transaction(self.conn, self.dialect, self._lock)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> SessionTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """A cursor inside one transaction: committed on success, rolled back on error."""

    def __init__(self, conn: Any, dialect: str, lock: threading.Lock) -> None:
        self.conn, self.dialect, self.lock = conn, dialect, lock

    def __enter__(self) -> Any:
        self.lock.acquire()
        try:
            self.cur = self.conn.cursor()
            if self.dialect == "sqlite":
                self.cur.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.cur

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        try:
            if kind is None:
                self.conn.commit()
            else:
                self.conn.rollback()
        finally:
            self.cur.close()
            self.lock.release()


def open_table(url: str, table: str = "sessions", *, create: bool = True) -> SessionTable:
    """Connect to ``url`` (``sqlite:///path`` or ``postgresql://...``), tables created if missing."""
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path.startswith("/") or path == "/":
            raise ConfigError(f"{url!r}: write sqlite:///relative/path.db or sqlite:////absolute/path.db")
        conn = sqlite3.connect(path[1:], timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        result = SessionTable(_SqliteConnection(conn), "sqlite", table)
    elif url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg
        except ImportError:
            raise ConfigError(
                "exporting to PostgreSQL needs psycopg: pip install 'sessionizer-pipeline[export-postgres]'"
            ) from None
        try:
            pg = psycopg.connect(url, autocommit=False)
        except psycopg.OperationalError as exc:
            raise ConfigError(f"cannot connect to {url.split('@')[-1]}: {exc}; check the URL "
                              "and that the server is running") from None
        result = SessionTable(pg, "postgresql", table)
    else:
        raise ConfigError(f"unsupported database URL {url!r}: use sqlite:///path.db or postgresql://...")
    if create:
        result.ensure_schema()
    return result


class _SqliteConnection:
    """sqlite3 in autocommit mode, with commit/rollback as statements (the transaction is
    opened explicitly with BEGIN IMMEDIATE, so concurrent exporters queue on the lock)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.raw = conn

    def cursor(self) -> sqlite3.Cursor:
        return self.raw.cursor()

    def commit(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("COMMIT")

    def rollback(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()
