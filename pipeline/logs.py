"""Log output of the worker and the gateway: readable text, or JSON lines; and the
Prometheus registry and exposition both of them serve (at the end).

``SESSIONIZER_LOG_FORMAT=json`` writes one JSON object per line::

    {"ts": "2026-01-31T12:00:00.123Z", "level": "INFO", "logger": "pipeline.worker",
     "message": "assigned partitions [0, 1]", "extra": {}}

``ts`` is UTC with milliseconds; ``extra`` holds the fields passed with
``log.info(..., extra={...})`` (values JSON cannot hold are written as text); a
record with an exception carries ``exc`` (the formatted traceback, one string).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from pipeline.config import Settings

__all__ = [
    "CONTENT_TYPE",
    "SECONDS_BUCKETS",
    "JsonFormatter",
    "configure_logging",
    "exposition",
    "is_json",
    "new_registry",
    "worker_logging_config",
]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has; anything else on a record came in ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message",
}


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON: ``ts``, ``level``, ``logger``, ``message``, ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "extra": {
                name: value for name, value in vars(record).items()
                if name not in _STANDARD and not name.startswith("_")
            },
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # e.g. an integer too large for JSON in extra
            entry["extra"] = {name: repr(value) for name, value in entry["extra"].items()}
            return orjson.dumps(entry, default=str).decode()


def is_json(settings: Settings) -> bool:
    return settings.log_format.strip().lower() == "json"


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> None:
    """Set up the root logger (the gateway, commands): text or JSON on ``stream``
    (standard error by default), at ``SESSIONIZER_LOG_LEVEL``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if is_json(settings) else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())


def worker_logging_config(settings: Settings) -> dict[str, Any] | None:
    """The ``logging.config.dictConfig`` the faust worker takes (``logging_config=``)
    for JSON lines on standard output; None for faust's own text logs."""
    if not is_json(settings):
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
        },
        "root": {"level": settings.log_level.upper(), "handlers": ["default"]},
    }


# -- metrics plumbing shared by the worker and the gateway ------------------------------

#: The text exposition format, version 0.0.4 (what every Prometheus scrapes).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: Histogram buckets for durations from half a millisecond to ten seconds.
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def new_registry() -> CollectorRegistry:
    """A registry of its own, with the process, platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in the text exposition format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE
