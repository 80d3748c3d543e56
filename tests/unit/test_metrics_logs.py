"""JSON log lines (SESSIONIZER_LOG_FORMAT=json): one object per line with ts, level,
logger, message and extra; the root logger and the faust worker's logging config."""

from __future__ import annotations

import io
import json
import logging
import sys
from typing import Any

from pipeline.config import Settings
from pipeline.logs import JsonFormatter, configure_logging, worker_logging_config


def _record(message: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("pipeline.worker", logging.WARNING, __file__, 1, message, args, exc_info)
    for name, val in extra.items():
        setattr(record, name, val)
    return record


def test_a_json_log_line_has_ts_level_logger_message_and_extra() -> None:
    line = JsonFormatter().format(_record("partition %d: %s", 3, "released", partition=3, obj=object()))
    entry = json.loads(line)
    assert "\n" not in line
    assert set(entry) == {"ts", "level", "logger", "message", "extra"}
    assert entry["level"] == "WARNING" and entry["logger"] == "pipeline.worker"
    assert entry["message"] == "partition 3: released"
    assert entry["extra"]["partition"] == 3
    assert entry["extra"]["obj"].startswith("<object object")  # not JSON: written as text
    assert entry["ts"].endswith("Z") and len(entry["ts"]) == len("2026-01-31T12:00:00.123Z")


def test_a_json_log_line_carries_the_traceback_in_one_string() -> None:
    entry = json.loads(JsonFormatter().format(_record("failed", exc=True)))
    assert "ValueError: boom" in entry["exc"]


def test_configure_logging_json_and_text() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        stream = io.StringIO()
        configure_logging(Settings(log_format="json", log_level="info"), stream)
        logging.getLogger("pipeline.gateway").info("listening on %s", "x", extra={"port": 8080})
        logging.getLogger("pipeline.gateway").debug("hidden")
        lines = stream.getvalue().splitlines()
        assert len(lines) == 1
        assert json.loads(lines[0])["extra"] == {"port": 8080}
        stream = io.StringIO()
        configure_logging(Settings(log_format="text"), stream)
        logging.getLogger("pipeline.gateway").warning("plain")
        assert stream.getvalue().rstrip().endswith("WARNING pipeline.gateway: plain")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_the_worker_logging_config_is_json_lines_or_none() -> None:
    assert worker_logging_config(Settings()) is None
    config = worker_logging_config(Settings(log_format="JSON", log_level="warning"))
    assert config is not None
    assert config["root"]["level"] == "WARNING"
    assert config["formatters"]["json"]["()"] is JsonFormatter
