"""How many sessions per second ``sessionizer export`` writes, on SQLite and PostgreSQL.

20,000 session records (five events each, about 1.6 kB) wait on a sessions topic of
four partitions; one exporter process reads them from the beginning. Its stop line
states the rate from the first batch read to the last written (the group join left out).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline.config import Settings
from pipeline.devtools.process import SessionizerProcess
from pipeline.export.sql import open_table

SESSIONS = 20_000


def session_record(i: int) -> dict[str, Any]:
    start = 1_764_000_000_000 + i * 1_000
    events = [{"id": f"e{i}-{k}", "type": "usage", "timestamp": start + k * 1000, "source": "page",
               "message": None, "value": None, "partition": 0, "offset": i * 5 + k} for k in range(5)]
    return {
        "session_id": f"{i:032x}", "project": f"proj{i % 7}", "user_id": f"user-{i}",
        "user_name": f"User {i}", "status": "closed", "start": _iso(start), "end": _iso(start + 4000),
        "duration_ms": 4000, "close_reason": "ended", "revision": 1, "event_count": 5,
        "heartbeat_count": 0, "duplicate_events": 0, "type_counts": {"usage": 5},
        "has_error": i % 10 == 0, "data": {"browser": "Firefox", "os": "Linux"},
        "events": events, "events_truncated": False,
    }


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


@pytest.mark.timeout(600)
def test_export_rate(database_url: str, settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    settings = settings_factory(topic_partitions=4)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, acks=1)
    for i in range(SESSIONS):
        rec = session_record(i)
        producer.send(settings.sessions_topic, key=rec["session_id"].encode(), value=orjson.dumps(rec))
    producer.flush(60)
    producer.close()

    log_path = tmp_path / "export.log"
    child = SessionizerProcess(
        "export", settings, log_path=log_path,
        args=["--to", database_url, "--from-beginning", "--progress", "2", "--group", f"rate-{tmp_path.name}"],
    ).spawn()
    deadline = time.monotonic() + 300
    with open_table(database_url) as table:
        while table.fetch("SELECT count(*) FROM sessions")[0][0] < SESSIONS:
            assert child.proc.poll() is None, child.log_text()
            assert time.monotonic() < deadline, child.log_text()
            time.sleep(0.2)
        assert child.stop(30) == 0, child.log_text()
        assert table.fetch("SELECT count(*), sum(event_count), sum(CASE WHEN has_error THEN 1 ELSE 0 END) "
                           "FROM sessions")[0] == (SESSIONS, 5 * SESSIONS, SESSIONS // 10)
    line = child.log_text().strip().splitlines()[-1]
    found = re.search(r"exported ([\d,]+) sessions .* ([\d,]+) sessions/s", line)
    assert found is not None, line
    assert int(found[1].replace(",", "")) == SESSIONS
    print(f"\n{database_url.split(':')[0]}: {line}")
