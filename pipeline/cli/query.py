"""``sessionizer sessions live|show``: read open sessions from Redis and print them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from pipeline.cli.display import format_duration
from pipeline.config import Settings, load_settings
from pipeline.core.timefmt import parse_timestamp_ms
from pipeline.store.connection import redis_client
from pipeline.store.redis import RedisStore


async def _with_store(settings: Settings, func: Any) -> Any:
    # AUTH and TLS as the worker reads them (SESSIONIZER_REDIS_PASSWORD, _SSL_*)
    store = RedisStore(redis_client(settings), settings.redis_key_prefix)
    try:
        await store.ping()
        return await func(store)
    finally:
        await store.close()


def live(project: str | None, user: str | None, limit: int, as_json: bool, settings: Settings | None = None) -> None:
    settings = settings or load_settings()
    records = asyncio.run(
        _with_store(settings, lambda s: s.open_sessions(project=project, user_id=user, limit=limit))
    )
    console = Console()
    if as_json:
        for record in records:
            console.out(orjson.dumps(record).decode(), highlight=False)
        return
    now_ms = int(time.time() * 1000)
    table = Table(title=f"{len(records)} open session(s)")
    for column in ("session", "project", "user", "started", "online for", "events", "errors", "last activity"):
        table.add_column(column)
    for r in records:
        start = parse_timestamp_ms(r["start"])
        table.add_row(
            r["session_id"], r["project"], r["user_name"] or r["user_id"] or "-", r["start"],
            format_duration(max(0, now_ms - start)), str(r["event_count"]),
            "yes" if r["has_error"] else "", r["end"],
        )
    console.print(table)


def show(session_id: str, as_json: bool, settings: Settings | None = None,
         project: str | None = None) -> bool:
    settings = settings or load_settings()
    record = asyncio.run(_with_store(settings, lambda s: s.get_session(session_id, project)))
    console = Console()
    if record is None:
        where = "" if project is None else f" in project {project!r}"
        console.print(f"no open session {session_id!r}{where} "
                      "(closed sessions are on the sessions topic)")
        return False
    if as_json:
        console.out(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode(), highlight=False)
        return True
    console.print(
        f"[bold]{record['session_id']}[/bold]  project {record['project']}  user "
        f"{record['user_id']} ({record['user_name'] or '-'})  {record['status']}\n"
        f"start {record['start']}  last activity {record['end']}  "
        f"{record['event_count']} events, {record['heartbeat_count']} heartbeats, "
        f"{record['duplicate_events']} duplicates, revision {record['revision']}"
    )
    table = Table(title="events" + (" (truncated)" if record["events_truncated"] else ""))
    for column in ("time", "type", "source", "message", "value", "id", "partition:offset"):
        table.add_column(column)
    for e in record["events"]:
        table.add_row(e["timestamp"], e["type"], e["source"] or "", (e["message"] or "")[:60],
                      "" if e["value"] is None else str(e["value"]), e["id"] or "",
                      f"{e['partition']}:{e['offset']}")
    console.print(table)
    if record["data"]:
        console.print_json(orjson.dumps(record["data"]).decode())
    return True
