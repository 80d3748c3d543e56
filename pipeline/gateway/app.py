"""The gateway's HTTP API (aiohttp): Exceptionless-compatible endpoints and ``/v1/events``.

=========================================  ===============================================
endpoint                                   answer
=========================================  ===============================================
``POST /api/v2/events``                    202 ``{"accepted", "rejected"}`` (Exceptionless batch)
``GET /api/v2/events/session/heartbeat``   200 (``?id=<session id or identity>&close=<bool>``)
``GET /api/v2/projects/config``            200 ``{"version", "settings"}``, 304 when current
``POST /v1/events``                        202 ``{"accepted", "ids"}`` (SPEC events)
=========================================  ===============================================

Browsers on the origins of ``SESSIONIZER_GATEWAY_CORS_ALLOWED_ORIGINS`` may call it
(:mod:`pipeline.gateway.cors`; none by default).

The admin surfaces (``GET /healthz``: 200 while the process serves; ``GET
/readyz``: 200 when the broker answers, else 503; ``GET /metrics``) are on a
separate app, :func:`create_admin_app`, that the gateway serves on its admin
port (``SESSIONIZER_GATEWAY_ADMIN_HOST`` / ``_PORT``, loopback by default), never
on the public one.

Every API call needs ``Authorization: Bearer <api key>`` (or
``?access_token=<api key>``); the key names the project. Refusals are JSON
``{"error": code, "message": text}``, checked in this order and publishing
nothing: 429 ``rate_limited`` with ``"limit": "auth_failures"`` (a client
address that failed authentication too often), 401 ``unauthorized``, 413
``body_too_large``, 400 ``invalid_json`` / ``invalid_body``, 413
``too_many_events``, 429 ``rate_limited`` with ``"limit": "events_per_key"``
(an event POST costs its number of events, any other call one), then per event.
Every 429 carries ``Retry-After``. The broker down is 503
``broker_unavailable``: a 2xx means every event is acknowledged by the broker.

Per-event problems differ by dialect. ``/v1/events`` is strict: one bad event
refuses the request (400 ``invalid_event``; 403 ``forbidden_project`` for
events of another project; 413 ``event_too_large`` for events over the
worker's ``SESSIONIZER_MAX_EVENT_BYTES``), listing each problem. ``/api/v2/events`` accepts the good events and lists the
others under ``rejected``, because the Exceptionless clients drop a batch
answered 400 and stop sending for four hours; an event with no user identity
and no session id, which Exceptionless accepts but no session can hold, is
rejected that way (``no_identity``), as is an event over the worker's size
limit (``too_large``). Both refuse an event nested deeper than 64 levels, a
date outside the years 1970-9999 (an Exceptionless ``date`` of ``1e20``) or a
field of the wrong type or length as ``invalid_event``, never with a 500; every
event refused on its own is counted in
``sessionizer_gateway_events_rejected_total{reason}``. A heartbeat for a session the gateway has seen end is
answered 200 ``{"ignored": "session_ended"}`` and not published
(:mod:`pipeline.gateway.ids`). The clients read 202 as success, 413 as
"send smaller batches" and 429/503 as "retry later", keeping the events.

Each event is one record on the events topic, keyed by its session id (else
its user id), timestamped with the time the request arrived.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from pipeline.access import TRUSTED_PROXIES, authenticate, parse_networks, rate_limited
from pipeline.credentials import check_secret
from pipeline.exceptions import BodyError, EventError, PublishError
from pipeline.gateway.cors import cors_middleware
from pipeline.gateway.ids import IdMemory
from pipeline.gateway.mapping import (
    assign_ids,
    check_size,
    from_exceptionless,
    from_spec,
    heartbeat_event,
    parse_body,
    parse_bool,
    routing_key,
)
from pipeline.gateway.publisher import Publish, Ready, Record
from pipeline.gateway.settings import GatewaySettings, load_gateway_settings
from pipeline.ratelimit import RateLimiter
from pipeline.report import setup_report
from pipeline.report.settings import ReportSettings

log = logging.getLogger(__name__)

#: The configuration version the gateway serves to Exceptionless clients.
CONFIG_VERSION = 1
_CONFIG_HEADERS = {"X-Exceptionless-ConfigVersion": str(CONFIG_VERSION)}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def refusal(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    return json_response({"error": code, "message": message, **extra}, status, headers)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Gateway:
    """The handlers and their state: keys, limits, id memory, the publish edge."""

    def __init__(
        self,
        api_keys: Mapping[str, str],
        publish: Publish,
        *,
        settings: GatewaySettings | None = None,
        max_event_bytes: int = 65_536,
        ready: Ready | None = None,
        clock_ms: Callable[[], int] = _now_ms,
        rate_clock: Callable[[], float] = time.monotonic,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or load_gateway_settings()
        self.max_event_bytes = max_event_bytes
        for key, project in api_keys.items():
            check_secret("SESSIONIZER_API_KEYS", key, f"the key of project {project!r}")
        self.api_keys = dict(api_keys)
        self.publish = publish
        self.ready = ready
        self.clock_ms = clock_ms
        self.rate = RateLimiter(
            self.settings.rate_limit, self.settings.rate_burst, clock=rate_clock
        )
        per_minute = self.settings.auth_failures_per_minute
        self.auth_failures = RateLimiter(per_minute / 60, max(1, per_minute), clock=rate_clock)
        self.ids = IdMemory(self.settings.id_memory)
        self.on_rejected = on_rejected

    def _count_rejected(self, rejected: list[dict[str, Any]]) -> None:
        if self.on_rejected is not None:
            for item in rejected:
                self.on_rejected(str(item["error"]))

    def __repr__(self) -> str:  # the keys are secrets
        return f"<Gateway projects={sorted(set(self.api_keys.values()))}>"

    # -- checks shared by the API endpoints ----------------------------------------

    def _admit(self, request: web.Request, cost: int | None = 1) -> tuple[str, str] | web.Response:
        """``(api key, project)``, or the 429/401 refusal; ``cost`` events taken from
        the key's budget (None: not yet, the caller charges them)."""
        admitted = authenticate(request, self.api_keys, self.auth_failures)
        if isinstance(admitted, web.Response):
            return admitted
        if cost is not None:
            limited = self._charge(admitted[0], cost)
            if limited is not None:
                return limited
        return admitted

    def _charge(self, key: str, events: int) -> web.Response | None:
        """The 429 refusal when ``key`` is past its events-per-second budget."""
        wait_s = self.rate.acquire(key, events)
        if wait_s <= 0:
            return None
        return rate_limited(
            "events_per_key",
            f"more than {self.settings.rate_limit:g} events per second (bursts of "
            f"{self.settings.rate_burst}) for this API key",
            wait_s,
        )

    async def _admit_events(self, request: web.Request) -> tuple[str, list[Any]] | web.Response:
        """``(project, raw events)`` of an event POST, or its 429/401/413/400 refusal."""
        admitted = self._admit(request, cost=None)
        if isinstance(admitted, web.Response):
            return admitted
        raws = await self._read_events(request)
        if isinstance(raws, web.Response):
            return raws
        limited = self._charge(admitted[0], len(raws))
        if limited is not None:
            return limited
        return admitted[1], raws

    async def _read_events(self, request: web.Request) -> list[Any] | web.Response:
        limit = self.settings.max_body_bytes
        too_large = refusal(
            413,
            "body_too_large",
            f"the request body is larger than {limit} bytes; send smaller batches",
        )
        if request.content_length is not None and request.content_length > limit:
            return too_large
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return too_large
        try:
            raws = parse_body(body)
        except BodyError as exc:
            return refusal(400, exc.code, exc.detail)
        if len(raws) > self.settings.max_events_per_batch:
            return refusal(
                413,
                "too_many_events",
                f"{len(raws)} events in one request; at most {self.settings.max_events_per_batch}",
            )
        return raws

    def _encode(
        self, events: list[dict[str, Any]], indexes: list[int]
    ) -> tuple[list[dict[str, Any]], list[bytes], list[dict[str, Any]]]:
        """Events within the per-event size limit with their JSON, and the others as errors."""
        kept: list[dict[str, Any]] = []
        values: list[bytes] = []
        errors: list[dict[str, Any]] = []
        for index, event in zip(indexes, events, strict=True):
            try:
                values.append(check_size(event, self.max_event_bytes))
                kept.append(event)
            except EventError as exc:
                errors.append({"index": index, "error": exc.code, "detail": exc.detail})
        return kept, values, errors

    async def _publish(
        self, events: list[dict[str, Any]], values: list[bytes], received_ms: int
    ) -> web.Response | None:
        """Publish and remember the ids; the 503 refusal when the broker does not ack."""
        if events:
            records = [
                Record(routing_key(event), value, received_ms)
                for event, value in zip(events, values, strict=True)
            ]
            try:
                await self.publish(records)
            except PublishError as exc:
                return refusal(
                    503,
                    "broker_unavailable",
                    f"{exc}; nothing was accepted, retry later",
                    headers={"Retry-After": "5"},
                )
        for event in events:
            self.ids.observe(event, received_ms=received_ms)
        return None

    # -- endpoints -----------------------------------------------------------------

    async def exceptionless_events(self, request: web.Request) -> web.Response:
        received_ms = self.clock_ms()
        admitted = await self._admit_events(request)
        if isinstance(admitted, web.Response):
            return admitted
        project, raws = admitted
        mapped: list[dict[str, Any]] = []
        mapped_raws: list[Any] = []
        indexes: list[int] = []
        rejected: list[dict[str, Any]] = []
        for index, raw in enumerate(raws):
            try:
                mapped.append(from_exceptionless(raw, project=project, received_ms=received_ms))
            except EventError as exc:
                rejected.append({"index": index, "error": exc.code, "detail": exc.detail})
                continue
            mapped_raws.append(raw)
            indexes.append(index)
        assign_ids(mapped, mapped_raws, project=project)
        events, values, too_large = self._encode(mapped, indexes)
        rejected = sorted(rejected + too_large, key=lambda r: int(r["index"]))
        failure = await self._publish(events, values, received_ms)
        if failure is not None:
            return failure
        self._count_rejected(rejected)
        if rejected:
            log.info(
                "project %s: %d of %d events rejected, first: %s",
                project,
                len(rejected),
                len(raws),
                rejected[0],
            )
        return json_response(
            {"accepted": len(events), "rejected": rejected}, 202, headers=_CONFIG_HEADERS
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        received_ms = self.clock_ms()
        admitted = self._admit(request)
        if isinstance(admitted, web.Response):
            return admitted
        _, project = admitted
        raw_id = request.query.get("id", "").strip()
        try:
            close = parse_bool(request.query.get("close"), name="close")
            target = self.ids.resolve_heartbeat(project, raw_id)
        except EventError as exc:
            return refusal(400, exc.code, exc.detail)
        if self.ids.has_ended(project, target):
            return json_response({"accepted": 0, "ignored": "session_ended"}, 200)
        event = heartbeat_event(
            project=project,
            received_ms=received_ms,
            close=close,
            session_id=target.session_id,
            user_id=target.user_id,
            user_name=target.user_name,
        )
        event["id"] = uuid.uuid4().hex
        if close:  # before publishing, so a repeat arriving meanwhile is not published too
            self.ids.mark_ended(project, target, received_ms)
        failure = await self._publish([event], [orjson.dumps(event)], received_ms)
        if failure is not None:
            if close:
                self.ids.clear_ended(project, target)
            return failure
        return json_response({"accepted": 1}, 200)

    async def project_config(self, request: web.Request) -> web.Response:
        admitted = self._admit(request)
        if isinstance(admitted, web.Response):
            return admitted
        try:
            client_version = int(request.query.get("v", "-1"))
        except ValueError:
            client_version = -1
        if client_version >= CONFIG_VERSION:
            return web.Response(status=304, headers=_CONFIG_HEADERS)
        return json_response(
            {"version": CONFIG_VERSION, "settings": {}}, 200, headers=_CONFIG_HEADERS
        )

    async def spec_events(self, request: web.Request) -> web.Response:
        received_ms = self.clock_ms()
        admitted = await self._admit_events(request)
        if isinstance(admitted, web.Response):
            return admitted
        project, raws = admitted
        mapped: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for index, raw in enumerate(raws):
            try:
                mapped.append(from_spec(raw, project=project))
            except EventError as exc:
                errors.append({"index": index, "error": exc.code, "detail": exc.detail})
        if not errors:
            assign_ids(mapped, raws, project=project)
            events, values, errors = self._encode(mapped, list(range(len(mapped))))
        if errors:
            self._count_rejected(errors)
            codes = {e["error"] for e in errors}
            status, code = {
                frozenset({"forbidden_project"}): (403, "forbidden_project"),
                frozenset({"too_large"}): (413, "event_too_large"),
            }.get(frozenset(codes), (400, "invalid_event"))
            return refusal(
                status,
                code,
                f"{len(errors)} of {len(raws)} events cannot be accepted; nothing was accepted",
                errors=errors,
            )
        failure = await self._publish(events, values, received_ms)
        if failure is not None:
            return failure
        return json_response({"accepted": len(events), "ids": [e["id"] for e in events]}, 202)

    # -- admin (create_admin_app) ---------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"}, 200)

    async def readyz(self, request: web.Request) -> web.Response:
        ready = True if self.ready is None else await self.ready()
        if ready:
            return json_response({"status": "ready"}, 200)
        return json_response(
            {"status": "not_ready", "reason": "the Kafka broker does not answer"}, 503
        )


GATEWAY = web.AppKey("gateway", Gateway)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405/413 as JSON refusals; unexpected errors as JSON 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "http_error"
        )
        return refusal(exc.status, code, f"{request.method} {request.path}: {exc.reason}")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return refusal(500, "internal_error", "the gateway failed on this request; see its log")


def create_app(
    api_keys: Mapping[str, str],
    publish: Publish,
    *,
    settings: GatewaySettings | None = None,
    max_event_bytes: int = 65_536,
    ready: Ready | None = None,
    clock_ms: Callable[[], int] = _now_ms,
    rate_clock: Callable[[], float] = time.monotonic,
    report_settings: ReportSettings | None = None,
    on_rejected: Callable[[str], None] | None = None,
) -> web.Application:
    """The aiohttp application; ``publish`` is the only I/O it does.

    ``max_event_bytes`` is the worker's per-event limit (``SESSIONIZER_MAX_EVENT_BYTES``):
    a larger event is refused here rather than dead-lettered there. ``on_rejected`` is
    called with the code of every event refused on its own (the metric
    ``sessionizer_gateway_events_rejected_total{reason}``).
    """
    gateway = Gateway(
        api_keys,
        publish,
        settings=settings,
        max_event_bytes=max_event_bytes,
        ready=ready,
        clock_ms=clock_ms,
        rate_clock=rate_clock,
        on_rejected=on_rejected,
    )
    app = web.Application(
        middlewares=[cors_middleware(gateway.settings.cors_origins), _json_errors],
        client_max_size=gateway.settings.max_body_bytes,
    )
    app[GATEWAY] = gateway
    app[TRUSTED_PROXIES] = parse_networks(gateway.settings.trusted_proxies)
    app.router.add_post("/api/v2/events", gateway.exceptionless_events)
    app.router.add_get("/api/v2/events/session/heartbeat", gateway.heartbeat)
    app.router.add_get("/api/v2/projects/config", gateway.project_config)
    app.router.add_post("/v1/events", gateway.spec_events)
    # the Sessions report: /sessions, /api/sessions (pipeline.report); the API keys open
    # their own project's sessions
    setup_report(
        app,
        api_keys=gateway.api_keys,
        auth_failures=gateway.auth_failures,
        report_settings=report_settings,
    )
    return app


def create_admin_app(app: web.Application) -> web.Application:
    """The admin surfaces of a gateway app: ``/healthz``, ``/readyz`` (and ``/metrics``,
    added by :meth:`pipeline.gateway.metrics.GatewayMetrics.install`), for the admin port."""
    gateway = app[GATEWAY]
    admin = web.Application(middlewares=[_json_errors])
    admin.router.add_get("/healthz", gateway.healthz)
    admin.router.add_get("/readyz", gateway.readyz)
    return admin
