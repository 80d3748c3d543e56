"""``sessionizer tail``: follow the sessions topic and print closed sessions.

Reads with no consumer group (nothing is committed, every partition is read),
from the end of the topic, or from the beginning with ``from_beginning``.
One line per session, or the record's raw JSON with ``as_json``.

The embedded broker answers "latest offset" with the first offset of a
partition's last record batch, so there a tail that starts at the end also
prints that last batch first.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import orjson
from kafka import KafkaConsumer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from pipeline.cli.display import format_duration
from pipeline.config import Settings, load_settings
from pipeline.security import UNREACHABLE_ERRORS, broker_unavailable, kafka_python_options

__all__ = ["format_duration", "format_session", "run_tail"]

REASON_STYLES = {"ended": "green", "timeout": "yellow", "max_duration": "magenta"}


def _fit(value: object, width: int) -> str:
    text = str(value) if value is not None else "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def format_session(record: dict[str, Any]) -> Text:
    """One readable line: end, project, user, id, duration, reason, counts, revision."""
    end = str(record.get("end") or "")
    when = f"{end[:10]} {end[11:19]}" if len(end) >= 19 else _fit(end, 19)
    reason = str(record.get("close_reason") or record.get("status") or "?")
    type_counts = record.get("type_counts") or {}
    errors = type_counts.get("error", 0) if isinstance(type_counts, dict) else 0
    if not errors and record.get("has_error"):
        errors = 1
    duration = record.get("duration_ms")
    parts = [
        f"[dim]{when:<19}[/]",
        f"[blue]{escape(_fit(record.get('project'), 12)):<12}[/]",
        f"{escape(_fit(record.get('user_id'), 32)):<32}",
        f"[dim]{escape(str(record.get('session_id') or '-')[:8]):<8}[/]",
        f"{format_duration(duration) if isinstance(duration, int) else '?':>7}",
        f"[{REASON_STYLES.get(reason, 'white')}]{escape(reason):<12}[/]",
        f"{record.get('event_count', 0):>5} events",
    ]
    if errors:
        parts.append(f"[red]{errors} error{'s' if errors != 1 else ''}[/]")
    revision = record.get("revision", 1)
    if isinstance(revision, int) and revision > 1:
        parts.append(f"[cyan]rev {revision}[/]")
    return Text.from_markup("  ".join(parts))


def _consumer(settings: Settings, from_beginning: bool) -> KafkaConsumer:
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()],
        "client_id": "sessionizer-tail",
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest" if from_beginning else "latest",
    }
    if "bootstrap_timeout_ms" in KafkaConsumer.DEFAULT_CONFIG:
        config["bootstrap_timeout_ms"] = 10_000
    config.update(kafka_python_options(settings))  # SASL/TLS, as the worker reads them
    try:
        return KafkaConsumer(settings.sessions_topic, **config)
    except UNREACHABLE_ERRORS:
        raise broker_unavailable(settings.kafka_bootstrap) from None


def run_tail(
    from_beginning: bool = False, as_json: bool = False, settings: Settings | None = None
) -> None:
    """Print closed sessions as they arrive, until Ctrl-C."""
    settings = settings if settings is not None else load_settings()
    consumer = _consumer(settings, from_beginning)
    console = Console(highlight=False, soft_wrap=True)
    if not as_json:
        Console(stderr=True, highlight=False).print(
            f"[dim]following {escape(settings.sessions_topic)} @ "
            f"{escape(settings.kafka_bootstrap)} (Ctrl-C to stop)[/]"
        )
    try:
        while True:
            batches = consumer.poll(timeout_ms=500)
            for partition in sorted(batches, key=lambda tp: tp.partition):
                for message in batches[partition]:
                    _print(console, message, as_json)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # e.g. piped into `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        consumer.close()


def _print(console: Console, message: Any, as_json: bool) -> None:
    value: bytes | None = message.value
    if as_json:
        sys.stdout.write((value or b"null").decode("utf-8", "replace") + "\n")
        sys.stdout.flush()
        return
    try:
        record = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        console.print(
            f"[dim]unreadable record at partition {message.partition} offset {message.offset}[/]"
        )
        return
    console.print(format_session(record))
