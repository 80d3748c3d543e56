"""The faust side of the worker: group membership, assignment, topics, web.

Faust stays the framework; its per-record stream machinery is bypassed. The
consumer's fetch loop (:class:`~pipeline.worker.internals.BatchConsumer`) hands
each fetched batch to :class:`~pipeline.worker.runtime.Runtime`, which owns
offsets and commits itself. This module only wires the runtime into a faust app:
the topics, the assignment signals, the timers and the web pages.

The faust web server is the worker's admin port (``SESSIONIZER_WEB_HOST`` /
``_PORT``, loopback by default): ``GET /healthz`` (liveness: 503 when a partition
with input waiting has applied nothing for ``SESSIONIZER_LIVENESS_STALL``
seconds), ``GET /readyz`` (200 once partitions are assigned and caught up),
``GET /stats`` and ``GET /metrics`` (Prometheus, :mod:`pipeline.worker.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.types import TP

from pipeline.config import Settings
from pipeline.security import faust_options
from pipeline.worker.heap import TRIM_INTERVAL_S, HeapTrimmer
from pipeline.worker.internals import SessionizerApp
from pipeline.worker.runtime import Runtime

__all__ = ["Runtime", "SessionizerApp", "build_app", "free_port"]

log = logging.getLogger("pipeline.worker")


def free_port(host: str) -> int:
    """A port the OS says is free now (faust refuses port 0)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _advertised(host: str) -> str:
    """The host name others reach this worker's web server by."""
    import socket

    return socket.gethostname() if host in ("0.0.0.0", "::", "") else host


def build_app(settings: Settings, partitions: int | None = None) -> SessionizerApp:
    """The worker's faust app; ``partitions``: the events topic's partition count as the
    preflight found it (the router's until the broker's metadata says otherwise)."""
    web_port = settings.web_port or free_port(settings.web_host)
    app = SessionizerApp(
        settings.consumer_group,
        **faust_options(settings),
        broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
        autodiscover=False,
        web_enabled=True,
        web_host=settings.web_host,
        web_port=web_port,
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=max(0.5, settings.kafka_session_timeout / 6),
        broker_max_poll_records=settings.batch_max_records,
        consumer_max_fetch_size=settings.fetch_partition_bytes,
        broker_commit_interval=3600.0,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        producer_acks=-1,
        store="memory://",
    )
    runtime = Runtime(app, settings, partitions)
    app.sessionizer = runtime  # type: ignore[attr-defined]
    runtime.web_url = f"http://{_advertised(settings.web_host)}:{web_port}"
    for name in (settings.events_topic, settings.repartition_topic):
        app.topics.add(app.topic(name, key_serializer="raw", value_serializer="raw"))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(sender: Any, assigned: set[TP], **_: Any) -> None:
        await runtime.on_assigned(assigned)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(sender: Any, revoked: set[TP], **_: Any) -> None:
        await runtime.on_revoked(revoked)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        stuck = runtime.stalled()
        if stuck:
            return web.json(
                {"ok": False, "partitions": sorted(runtime.processors), "stalled": stuck,
                 "reason": f"partitions {stuck} have input waiting and applied nothing for "
                           f"{settings.liveness_stall:g} s"},
                status=503,
            )
        return web.json({"ok": True, "partitions": sorted(runtime.processors)})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ready, reason = runtime.readiness()
        return web.json(
            {"status": "ready" if ready else "not_ready", "reason": reason,
             "partitions": sorted(runtime.processors)},
            status=200 if ready else 503,
        )

    @app.page("/stats")
    async def stats(web: Any, request: Any) -> Any:
        return web.json({"partitions": sorted(runtime.processors), "totals": dict(runtime.totals)})

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        body, content_type = runtime.metrics.exposition()
        return web.bytes(body, headers={"Content-Type": content_type})

    @app.timer(settings.metrics_interval, name="sessionizer-gauges")  # type: ignore[untyped-decorator]
    async def _gauges() -> None:
        try:
            await runtime.refresh_gauges()
        except Exception:  # monitoring only: never take the worker down for it
            log.exception("refreshing the gauges failed")

    if settings.heap_trim_mib:
        trimmer = HeapTrimmer(settings.heap_trim_mib * 2**20)

        @app.timer(TRIM_INTERVAL_S, name="sessionizer-heap-trim")  # type: ignore[untyped-decorator]
        async def _trim_heap() -> None:
            # in a thread: the trim releases the GIL, and the batches go on meanwhile
            released = await asyncio.get_running_loop().run_in_executor(None, trimmer.maybe_trim)
            if released:
                runtime.metrics.heap_released.inc(released)

    return app
