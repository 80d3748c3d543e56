"""Prometheus metrics of the gateway (``GET /metrics`` on its admin port, text format).

Fed by an aiohttp middleware and a wrapper around the publish function; each process
keeps its own registry. docs/operations.md ("Metrics") says what each one means.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.logs import SECONDS_BUCKETS, exposition, new_registry

__all__ = ["GatewayMetrics", "Publish"]

Publish = Callable[[Sequence[Any]], Awaitable[None]]


class GatewayMetrics:
    """The gateway's metrics (prefixed ``sessionizer_gateway_``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        r = self.registry
        self.requests = Counter(
            "sessionizer_gateway_requests",
            "HTTP requests answered, by endpoint (route), method and status.",
            ["endpoint", "method", "status"], registry=r,
        )
        self.request_seconds = Histogram(
            "sessionizer_gateway_request_duration_seconds", "Time to answer a request, by endpoint.",
            ["endpoint"], buckets=SECONDS_BUCKETS, registry=r,
        )
        self.in_flight = Gauge(
            "sessionizer_gateway_requests_in_flight", "Requests being answered now.", registry=r
        )
        self.published = Counter(
            "sessionizer_gateway_events_published",
            "Events published to the events topic and acknowledged by the broker.", registry=r,
        )
        self.events_rejected = Counter(
            "sessionizer_gateway_events_rejected",
            "Events refused one by one, by reason (the SPEC section 6 code: invalid_event, "
            "no_identity, too_large, forbidden_project); the rest of their request goes on.",
            ["reason"], registry=r,
        )
        self.publish_failures = Counter(
            "sessionizer_gateway_publish_failures",
            "Publish calls the broker did not acknowledge (the request was answered 503).", registry=r,
        )
        self.publish_seconds = Histogram(
            "sessionizer_gateway_publish_duration_seconds",
            "From publishing a request's events to the broker's acknowledgement of all of them.",
            buckets=SECONDS_BUCKETS, registry=r,
        )

    def exposition(self) -> tuple[bytes, str]:
        return exposition(self.registry)

    def count_rejected(self, reason: str) -> None:
        """One event refused by the gateway for ``reason``."""
        self.events_rejected.labels(reason).inc()

    def instrument(self, publish: Publish) -> Publish:
        """``publish``, counting events and timing each call."""

        async def timed_publish(records: Sequence[Any]) -> None:
            started = time.perf_counter()
            try:
                await publish(records)
            except Exception:
                self.publish_failures.inc()
                raise
            finally:
                self.publish_seconds.observe(time.perf_counter() - started)
            self.published.inc(len(records))

        return timed_publish

    def install(self, app: Any, admin: Any = None) -> None:
        """Add the request-counting middleware to an aiohttp app and ``GET /metrics`` to
        its ``admin`` app (default: the app itself), before they start; the middleware
        goes outermost, so it sees every answer."""
        from aiohttp import web

        @web.middleware
        async def count_requests(request: web.Request, handler: Any) -> web.StreamResponse:
            started = time.perf_counter()
            self.in_flight.inc()
            status = 500
            try:
                response: web.StreamResponse = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self.in_flight.dec()
                endpoint = _endpoint(request)
                self.requests.labels(endpoint, request.method, str(status)).inc()
                self.request_seconds.labels(endpoint).observe(time.perf_counter() - started)

        async def metrics(request: web.Request) -> web.Response:
            body, content_type = self.exposition()
            return web.Response(body=body, headers={"Content-Type": content_type})

        app.middlewares.insert(0, count_requests)
        (app if admin is None else admin).router.add_get("/metrics", metrics)


def _endpoint(request: Any) -> str:
    """The route a request matched (``/api/v2/events``), or ``unmatched``: a bounded label."""
    route = getattr(request.match_info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return "unmatched"
    canonical = getattr(resource, "canonical", None)
    return str(canonical) if canonical else "unmatched"
