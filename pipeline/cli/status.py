"""``sessionizer status``: the cluster at a glance.

What it reads, and from where:

- **Kafka** (kafka-python, with the security settings): the consumer group's state
  and members (``DescribeGroups``) with the partitions each was assigned, the
  group's committed offsets, the end offsets of the topics (sampled twice,
  ``--sample`` seconds apart, for the rates).
- **Redis**: per partition, the open sessions (``HLEN <prefix>:{pP}:open``), the
  fencing epoch, the stream clock and the applied offsets (``<prefix>:{pP}:meta``);
  and the workers hash, ``<prefix>:workers``, where every worker announces itself
  (host, pid, web address, partitions, epochs) every ``SESSIONIZER_METRICS_INTERVAL``
  seconds. A partition's owner is its Kafka assignment when the broker reports one,
  else the worker that announced it.
- **The settings**: the effective session rules, with the per-project overrides.

:func:`collect_status` gathers it into one JSON-ready dict; :func:`run_status`
prints it as rich tables, or as that JSON (``--json``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from pipeline.config import Settings, load_settings
from pipeline.exceptions import BrokerUnavailable
from pipeline.security import (
    check_redis,
    kafka_python_options,
    kafka_security,
    redis_address,
)

__all__ = ["collect_status", "run_status"]

# -- Kafka ----------------------------------------------------------------------------


def _admin_class() -> Any:
    from kafka import KafkaAdminClient

    class Admin(KafkaAdminClient):  # type: ignore[misc]
        """kafka-python's admin, tolerant of a broker that sends ACL bits it cannot name
        in a DescribeGroups reply (it always asks for them; Tansu answers 15)."""

        def _process_acl_operations(self, obj: Any) -> Any:
            try:
                return super()._process_acl_operations(obj)
            except ValueError:
                obj["authorized_operations"] = None
                return obj

    return Admin


def _assigned(assignment: Any) -> dict[str, list[int]]:
    """``{topic: [partitions]}`` of a member assignment, however kafka-python decoded it."""
    out: dict[str, list[int]] = {}
    if not assignment or isinstance(assignment, str | bytes):
        return out
    if hasattr(assignment, "partitions") and callable(assignment.partitions):
        for tp in assignment.partitions():
            out.setdefault(tp.topic, []).append(tp.partition)
    elif isinstance(assignment, dict):
        for item in assignment.get("assigned_partitions") or assignment.get("assignment") or []:
            topic, partitions = (item["topic"], item["partitions"]) if isinstance(item, dict) else item
            out.setdefault(topic, []).extend(partitions)
    return {topic: sorted(parts) for topic, parts in out.items()}


def _describe_group(admin: Any, group: str) -> dict[str, Any]:
    if hasattr(admin, "describe_groups"):  # kafka-python 3
        raw = admin.describe_groups([group])[group]
        members = raw.get("members") or []
        state = raw.get("group_state") or raw.get("state")
    else:  # kafka-python 2
        info = admin.describe_consumer_groups([group])[0]
        raw, members, state = info._asdict(), [m._asdict() for m in info.members], info.state
    return {
        "id": group,
        "state": state or "",
        "members": [
            {
                "member_id": m.get("member_id", ""),
                "client_id": m.get("client_id", ""),
                "host": (m.get("client_host") or "").lstrip("/"),
                "assignment": _assigned(m.get("member_assignment")),
            }
            for m in members
        ],
    }


def _committed(admin: Any, group: str) -> dict[tuple[str, int], int]:
    if hasattr(admin, "list_group_offsets"):  # kafka-python 3
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    else:
        offsets = admin.list_consumer_group_offsets(group)
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


class _Kafka:
    """The Kafka side: an admin client and a group-less consumer for end offsets."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaConsumer

        options = kafka_python_options(kafka_security(settings))
        common = {"bootstrap_servers": settings.kafka_bootstrap, "request_timeout_ms": 10_000, **options}
        self.admin = _admin_class()(client_id="sessionizer-status", **common)
        self.consumer = KafkaConsumer(client_id="sessionizer-status", enable_auto_commit=False, **common)

    def partitions(self, topic: str) -> list[int]:
        return sorted(self.consumer.partitions_for_topic(topic) or ())

    def end_offsets(self, topics: dict[str, list[int]]) -> dict[tuple[str, int], int]:
        from kafka import TopicPartition

        tps = [TopicPartition(topic, p) for topic, parts in topics.items() for p in parts]
        if not tps:
            return {}
        return {(tp.topic, tp.partition): offset for tp, offset in self.consumer.end_offsets(tps).items()}

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()


# -- Redis ----------------------------------------------------------------------------


async def _redis_view(settings: Settings, partitions: list[int]) -> dict[str, Any]:
    from pipeline.store.connection import redis_client
    from pipeline.store.keys import Keys
    from pipeline.worker.registry import workers_key

    client = redis_client(settings)
    keys = Keys(settings.redis_key_prefix)
    try:
        await check_redis(client, settings)
        shards = {int(p) for p in await client.smembers(keys.shards)}
        wanted = sorted(set(partitions) | shards)
        pipe = client.pipeline(transaction=False)
        for p in wanted:
            pipe.hlen(keys.open(p))
            pipe.hgetall(keys.meta(p))
        pipe.hgetall(workers_key(settings.redis_key_prefix))
        replies = await pipe.execute()
    finally:
        await client.aclose()
    by_partition: dict[int, dict[str, Any]] = {}
    for i, p in enumerate(wanted):
        open_count, meta = replies[2 * i], replies[2 * i + 1]
        fields = {k.decode(): v.decode() for k, v in meta.items()}
        by_partition[p] = {
            "open_sessions": int(open_count),
            "epoch": int(fields["epoch"]) if "epoch" in fields else None,
            "clock_ms": int(fields["clock_ms"]) if "clock_ms" in fields else None,
            "applied": {k[4:]: int(v) for k, v in fields.items() if k.startswith("off:")},
        }
    workers = []
    for value in replies[-1].values():
        try:
            workers.append(orjson.loads(value))
        except ValueError:
            continue
    return {"partitions": by_partition, "workers": workers}


# -- everything -------------------------------------------------------------------------


def _rules(settings: Settings) -> dict[str, Any]:
    def seconds(rules: Any) -> dict[str, Any]:
        return {
            "inactivity_timeout_s": rules.inactivity_timeout_ms / 1000,
            "max_session_duration_s": rules.max_session_duration_ms / 1000,
            "reopen_grace_s": rules.reopen_grace_ms / 1000,
        }

    base = settings.rules
    return {
        **seconds(base),
        "max_future_skew_s": base.max_future_skew_ms / 1000,
        "max_event_age_s": base.max_event_age_ms / 1000,
        "max_events_per_session": base.max_events_per_session,
        "max_event_bytes": base.max_event_bytes,
        "projects": {project: seconds(rules) for project, rules in sorted(settings.project_rules.items())},
    }


def collect_status(settings: Settings, *, sample_s: float = 1.0) -> dict[str, Any]:
    """The cluster's state as one JSON-ready dict (see the module docstring)."""
    from kafka.errors import KafkaError

    security = kafka_security(settings)
    events, repartition = settings.events_topic, settings.repartition_topic
    rate_topics = {"events": events, "sessions": settings.sessions_topic, "dead_letters": settings.dlq_topic}
    try:
        kafka = _Kafka(settings)
    except (KafkaError, OSError) as exc:
        raise _broker_error(settings, security.protocol, exc) from None
    try:
        try:
            group = _describe_group(kafka.admin, settings.consumer_group)
            committed = _committed(kafka.admin, settings.consumer_group)
            topic_parts = {t: kafka.partitions(t) for t in {events, repartition, *rate_topics.values()}}
            first = kafka.end_offsets(topic_parts)
            first_at = time.monotonic()
        except (KafkaError, OSError) as exc:
            raise _broker_error(settings, security.protocol, exc) from None
        partitions = topic_parts[events]
        redis = asyncio.run(_redis_view(settings, partitions))
        rates: dict[str, Any] | None = None
        if sample_s > 0:
            time.sleep(max(0.0, sample_s - (time.monotonic() - first_at)))
            try:
                second = kafka.end_offsets({t: topic_parts[t] for t in rate_topics.values()})
            except (KafkaError, OSError) as exc:
                raise _broker_error(settings, security.protocol, exc) from None
            elapsed = time.monotonic() - first_at
            rates = {"interval_s": round(elapsed, 3)}
            for name, topic in rate_topics.items():
                delta = sum(second.get((topic, p), 0) - first.get((topic, p), 0) for p in topic_parts[topic])
                rates[f"{name}_per_s"] = round(delta / elapsed, 2)
    finally:
        kafka.close()

    now_ms = time.time_ns() // 1_000_000
    workers = []
    for w in redis["workers"]:
        age_s = (now_ms - int(w.get("seen_ms", 0))) / 1000
        live = age_s <= 3 * float(w.get("interval_s", 5.0)) + 5
        workers.append({**w, "seen_s_ago": round(age_s, 1), "live": live})
    workers.sort(key=lambda w: (not w["live"], str(w.get("id"))))

    owner_kafka: dict[int, str] = {}
    for member in group["members"]:
        for p in member["assignment"].get(events, []):
            owner_kafka[p] = member["member_id"]
    owner_redis: dict[int, str] = {}
    for w in workers:
        if w["live"]:
            for p in w.get("partitions", []):
                owner_redis.setdefault(int(p), str(w["id"]))

    kafka_sets: dict[str, set[int]] = {}
    for p, member_id in owner_kafka.items():
        kafka_sets.setdefault(member_id, set()).add(p)
    redis_sets: dict[str, set[int]] = {}
    for p, worker_id in owner_redis.items():
        redis_sets.setdefault(worker_id, set()).add(p)

    rows = []
    for p in sorted(set(partitions) | set(redis["partitions"])):
        stored = redis["partitions"].get(p, {})
        row: dict[str, Any] = {"partition": p}
        if p in owner_kafka and p in owner_redis and kafka_sets[owner_kafka[p]] == redis_sets[owner_redis[p]]:
            # both agree (Apache Kafka reports assignments): name the worker, as Redis does
            row["owner"], row["owner_source"] = owner_redis[p], "kafka"
        elif p in owner_kafka:
            row["owner"], row["owner_source"] = owner_kafka[p], "kafka"
        elif p in owner_redis:
            row["owner"], row["owner_source"] = owner_redis[p], "redis"
        else:
            row["owner"], row["owner_source"] = None, None
        for name, topic in (("events", events), ("repartition", repartition)):
            end = first.get((topic, p))
            done = committed.get((topic, p))
            row[name] = {
                "committed": done,
                "end": end,
                "lag": None if end is None else max(0, end - (done or 0)),
                "applied": stored.get("applied", {}).get(topic),
            }
        row["open_sessions"] = stored.get("open_sessions", 0)
        row["epoch"] = stored.get("epoch")
        clock = stored.get("clock_ms")
        row["stream_clock_ms"] = clock
        rows.append(row)

    return {
        "at_ms": now_ms,
        "kafka": {"bootstrap": settings.kafka_bootstrap, "security_protocol": security.protocol},
        "redis": {"address": redis_address(settings.redis_url), "key_prefix": settings.redis_key_prefix},
        "topics": {
            "events": {"name": events, "partitions": len(topic_parts[events])},
            "repartition": {"name": repartition, "partitions": len(topic_parts[repartition])},
            "sessions": {"name": settings.sessions_topic, "partitions": len(topic_parts[settings.sessions_topic])},
            "dead_letters": {"name": settings.dlq_topic, "partitions": len(topic_parts[settings.dlq_topic])},
        },
        "group": group,
        "workers": workers,
        "partitions": rows,
        "totals": {
            "open_sessions": sum(r["open_sessions"] for r in rows),
            "lag": sum((r["events"]["lag"] or 0) + (r["repartition"]["lag"] or 0) for r in rows),
            "owned": sum(1 for r in rows if r["owner"] is not None),
        },
        "rates": rates,
        "rules": _rules(settings),
    }


def _broker_error(settings: Settings, protocol: str, exc: BaseException) -> BrokerUnavailable:
    secured = (
        f", SESSIONIZER_KAFKA_SECURITY_PROTOCOL ({protocol}) and the _SASL_* / _SSL_* settings"
        if protocol != "PLAINTEXT" else ""
    )
    return BrokerUnavailable(
        f"cannot reach Kafka at {settings.kafka_bootstrap} ({type(exc).__name__}: {exc}); "
        f"check SESSIONIZER_KAFKA_BOOTSTRAP{secured} and that the broker is running"
    )


# -- output ------------------------------------------------------------------------------


def _clock(ms: int | None) -> str:
    """A stream clock as UTC time of day (the date when it is not today)."""
    if not ms:
        return "-"
    from datetime import UTC, datetime

    at, now = datetime.fromtimestamp(ms / 1000, UTC), datetime.now(UTC)
    return at.strftime("%H:%M:%S" if at.date() == now.date() else "%Y-%m-%d %H:%M")


def _short(member_id: str) -> str:
    """``faust-0.15.3-90b51e01-...`` as ``faust-0.15.3-90b51e01``."""
    parts = member_id.split("-")
    return "-".join(parts[:3]) if len(parts) > 4 else member_id


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def render(status: dict[str, Any], console: Any) -> None:
    """Print ``status`` as tables."""
    from rich.table import Table

    group = status["group"]
    totals = status["totals"]
    topics = status["topics"]
    console.print(
        f"[bold]group[/] {group['id']} ({group['state'] or 'unknown'}, {len(group['members'])} member(s))"
        f"   [bold]events[/] {topics['events']['name']} ({topics['events']['partitions']} partitions)"
        f"   [bold]kafka[/] {status['kafka']['bootstrap']} ({status['kafka']['security_protocol']})"
        f"   [bold]redis[/] {status['redis']['address']} (prefix {status['redis']['key_prefix']})",
        highlight=False,
    )
    rates = status["rates"]
    if rates is not None:
        console.print(
            f"[bold]rates[/] over {rates['interval_s']:.1f}s: {rates['events_per_s']:g} input records/s, "
            f"{rates['sessions_per_s']:g} session records/s, {rates['dead_letters_per_s']:g} dead letters/s",
            highlight=False,
        )
    console.print(
        f"[bold]totals[/] {totals['open_sessions']:,} open sessions, lag {totals['lag']:,} records, "
        f"{totals['owned']}/{len(status['partitions'])} partitions owned",
        highlight=False,
    )

    members = Table(title="Consumer group members (Kafka)", title_justify="left")
    for column in ("member", "client", "host", "assigned"):
        members.add_column(column)
    for m in group["members"]:
        assigned = ", ".join(f"{t}: {p}" for t, p in m["assignment"].items()) or "(not reported)"
        members.add_row(_short(m["member_id"]), m["client_id"] or "-", m["host"] or "-", assigned)
    console.print(members)

    workers = Table(title="Workers (announced in Redis)", title_justify="left")
    for column in ("worker", "web", "partitions", "last seen"):
        workers.add_column(column)
    for w in status["workers"]:
        seen = f"{w['seen_s_ago']:.0f}s ago" + ("" if w["live"] else " (gone)")
        workers.add_row(str(w.get("id")), w.get("web") or "-", _num(w.get("partitions")), seen)
    console.print(workers)

    parts = Table(title="Partitions", title_justify="left")
    for column, justify in (
        ("p", "right"), ("owner", "left"), ("committed", "right"), ("end", "right"), ("lag", "right"),
        ("re-lag", "right"), ("applied", "right"), ("epoch", "right"), ("open", "right"),
        ("clock", "left"),
    ):
        parts.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in status["partitions"]:
        ev, rp = r["events"], r["repartition"]
        owner = "[red]none[/]" if r["owner"] is None else _short(r["owner"])
        lag = r["events"]["lag"]
        lag_text = _num(lag) if not lag else f"[yellow]{lag:,}[/]"
        parts.add_row(
            str(r["partition"]), owner, _num(ev["committed"]), _num(ev["end"]), lag_text,
            _num(rp["lag"]), _num(ev["applied"]), _num(r["epoch"]), _num(r["open_sessions"]),
            _clock(r["stream_clock_ms"]),
        )
    console.print(parts)
    console.print(
        "committed: the group's offset in Kafka; applied: the last offset written to Redis; "
        "re-lag: lag of the repartition topic; clock: the stream clock at the last commit (UTC)",
        style="dim", highlight=False,
    )

    rules = status["rules"]
    table = Table(title="Session rules (effective)", title_justify="left")
    for column in ("project", "inactivity timeout", "max duration", "reopen grace"):
        table.add_column(column)
    table.add_row("(default)", f"{rules['inactivity_timeout_s']:g}s", f"{rules['max_session_duration_s']:g}s",
                  f"{rules['reopen_grace_s']:g}s")
    for project, r in rules["projects"].items():
        table.add_row(project, f"{r['inactivity_timeout_s']:g}s", f"{r['max_session_duration_s']:g}s",
                      f"{r['reopen_grace_s']:g}s")
    console.print(table)
    console.print(
        f"max future skew {rules['max_future_skew_s']:g}s, max event age {rules['max_event_age_s']:g}s, "
        f"{rules['max_events_per_session']} events listed per session, events up to "
        f"{rules['max_event_bytes']} bytes",
        highlight=False,
    )


def run_status(*, as_json: bool = False, sample_s: float = 1.0, settings: Settings | None = None) -> None:
    """``sessionizer status``."""
    from rich.console import Console

    settings = settings or load_settings()
    status = collect_status(settings, sample_s=sample_s)
    console = Console()
    if as_json:
        console.out(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode(), highlight=False)
    else:
        render(status, console)
