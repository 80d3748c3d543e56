"""The Sessions report on the gateway: the page at ``/sessions`` and its JSON API.

=====================================  ================================================
route                                  answer
=====================================  ================================================
``GET /sessions``                      the report page (list and dashboard)
``GET /sessions/{session_id}``         the same page, opened on one session
``GET /sessions/assets/{name}``        its script and style sheet
``GET /api/sessions``                  ``{"sessions", "count", "limit", "has_more",
                                       "partial", "now"}``: open and closed sessions,
                                       newest start first
``GET /api/sessions/stats``            dashboard numbers and ``series`` buckets
``GET /api/sessions/{session_id}``     ``{"session", "now"}``: one session with its
                                       events and data; 404 when unknown
=====================================  ================================================

The JSON API always needs a credential in ``Authorization: Bearer <x>`` (never
in the URL: it would end up in access logs); the page asks for it and keeps it
for the browser tab. An ingestion API key (``SESSIONIZER_API_KEYS``) sees its
own project's sessions only (a ``project`` parameter naming another one is 403
``forbidden_project``); the operator token ``SESSIONIZER_REPORT_TOKEN`` sees
every project. The page and its assets hold no data and are served to anyone.

A list answers summaries (no events, no data), one page of at most ``limit``
rows from ``offset``; each call reads at most ``SESSIONIZER_REPORT_MAX_OPEN``
open and ``SESSIONIZER_REPORT_SCAN_LIMIT`` closed sessions from Redis. Calls are
limited per client address (``SESSIONIZER_REPORT_RATE_LIMIT`` per second,
bursts of ``_RATE_BURST``), as are failed authentications (:mod:`pipeline.access`).

Refusals are JSON ``{"error", "message"}``: 400 ``invalid_parameter`` (with
``parameter``), 401 ``unauthorized``, 403 ``forbidden_project``, 404
``not_found``, 429 ``rate_limited`` (with ``limit`` and ``Retry-After``), 503
``store_unavailable``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.access import auth_failure_refusal, client_address, find_key, rate_limited
from pipeline.config import Settings, load_settings
from pipeline.core.timefmt import format_ms
from pipeline.credentials import check_secret
from pipeline.exceptions import Forbidden, ParamError, RedisUnavailable
from pipeline.ratelimit import RateLimiter
from pipeline.report import stats
from pipeline.report.data import Limits, ReportStore, SessionData, detail, summary
from pipeline.report.params import (
    parse_list_query,
    parse_session_id,
    parse_session_query,
    parse_stats_query,
)
from pipeline.report.settings import ReportSettings, load_report_settings

log = logging.getLogger(__name__)

_STORE_DOWN = (RedisConnectionError, RedisTimeoutError, RedisUnavailable, OSError)
_CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _refusal(status: int, code: str, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _json({"error": code, "message": message, **extra}, status, headers)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


_MISSING_ASSETS = (
    "the report page is missing from this installation (pipeline/report/static, package "
    "data report/static/*); the JSON API under /api/sessions works"
)


def load_assets() -> dict[str, Asset]:
    """The page's files from ``pipeline/report/static`` (package data); none when the
    package was installed without them (then the page answers 500, the API still works)."""
    assets = {}
    folder = resources.files("pipeline.report").joinpath("static")
    for entry in folder.iterdir() if folder.is_dir() else ():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _CONTENT_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'
            assets[entry.name] = Asset(body, _CONTENT_TYPES[suffix], etag)
    if "index.html" not in assets:
        log.error("%s", _MISSING_ASSETS)
    return assets


#: who a credential lets see: every project (None) or one
Scope = str | None


def scoped(scope: Scope, asked: str | None) -> str | None:
    """The project a call may read: what it asked for, within the credential's scope."""
    if scope is None:
        return asked
    if asked is not None and asked != scope:
        raise Forbidden(asked)
    return scope


class Report:
    """The report's handlers; ``data`` is set when the app starts."""

    def __init__(
        self,
        token: str = "",
        *,
        api_keys: Mapping[str, str] | None = None,
        data: SessionData | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        rate: RateLimiter | None = None,
        auth_failures: RateLimiter | None = None,
    ) -> None:
        self.token = token
        self.api_keys = dict(api_keys or {})
        self.data = data
        self.clock_ms = clock_ms
        self.assets = load_assets()
        self.rate = rate or RateLimiter(0, 1)
        self.auth_failures = auth_failures or RateLimiter(10 / 60, 10)

    def __repr__(self) -> str:  # the token and keys are secrets
        return f"<Report projects={sorted(set(self.api_keys.values()))}>"

    # -- API ------------------------------------------------------------------------
    def _scope(self, request: web.Request) -> Scope | web.Response:
        """Every project (the operator token), one (an API key), or the 429/401 refusal."""
        blocked = auth_failure_refusal(request, self.auth_failures)
        if blocked is not None:
            return blocked
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given = given.strip() if scheme.lower() == "bearer" else ""
        if given:
            if self.token and hmac.compare_digest(given.encode(), self.token.encode()):
                return None
            project = find_key(self.api_keys, given)
            if project is not None:
                return project
        self.auth_failures.acquire(client_address(request))
        return _refusal(
            401,
            "unauthorized",
            "the Sessions report needs Authorization: Bearer <the API key of your project, "
            "or the operator token SESSIONIZER_REPORT_TOKEN>",
        )

    async def _answer(
        self, request: web.Request, handler: Callable[[Scope], Any]
    ) -> web.Response:
        scope = self._scope(request)
        if isinstance(scope, web.Response):
            return scope
        wait_s = self.rate.acquire(client_address(request))
        if wait_s > 0:
            return rate_limited(
                "report_requests",
                f"more than {self.rate.rate:g} report requests per second from this address",
                wait_s,
            )
        try:
            return await handler(scope)  # type: ignore[no-any-return]
        except Forbidden as exc:
            return _refusal(
                403,
                "forbidden_project",
                f"this API key does not open project {exc.project!r}; use its own project's "
                "key, or the operator token",
            )
        except ParamError as exc:
            return _refusal(400, "invalid_parameter", str(exc), parameter=exc.parameter)
        except _STORE_DOWN as exc:
            log.warning("sessions report: the store does not answer: %s", exc)
            return _refusal(
                503,
                "store_unavailable",
                f"cannot read sessions from Redis ({exc}); check SESSIONIZER_REDIS_URL "
                "and that Redis is running",
            )

    @property
    def _data(self) -> SessionData:
        if self.data is None:
            raise RuntimeError("the report's store is not open: the app has not started")
        return self.data

    async def list_sessions(self, request: web.Request) -> web.Response:
        async def answer(scope: Scope) -> web.Response:
            query = parse_list_query(request.query.items())
            query = replace(query, project=scoped(scope, query.project))
            found = await self._data.find(query)
            return _json({
                "sessions": [summary(r) for r in found.sessions],
                "count": len(found.sessions),
                "limit": query.limit,
                "offset": query.offset,
                "next_offset": query.offset + len(found.sessions) if found.has_more else None,
                "has_more": found.has_more,
                "partial": found.partial,
                "now": format_ms(self.clock_ms()),
            })

        return await self._answer(request, answer)

    async def session_stats(self, request: web.Request) -> web.Response:
        async def answer(scope: Scope) -> web.Response:
            now_ms = self.clock_ms()
            query = parse_stats_query(request.query.items(), now_ms)
            query = replace(query, project=scoped(scope, query.project))
            records, partial = await self._data.started_between(
                query.project, query.since_ms, query.until_ms
            )
            numbers = stats.compute(records, query.since_ms, query.until_ms)
            return _json(
                {"project": query.project, **numbers, "partial": partial, "now": format_ms(now_ms)}
            )

        return await self._answer(request, answer)

    async def session(self, request: web.Request) -> web.Response:
        async def answer(scope: Scope) -> web.Response:
            session_id = parse_session_id(request.match_info["session_id"])
            project = scoped(scope, parse_session_query(request.query.items()))
            record = await self._data.get(session_id, project)
            if record is None:
                where = "" if project is None else f" in project {project!r}"
                return _refusal(
                    404,
                    "not_found",
                    f"no open session and no closed session in the recent history has id "
                    f"{session_id!r}{where} (closed sessions are kept for "
                    "SESSIONIZER_HISTORY_RETENTION)",
                )
            return _json({"session": detail(record), "now": format_ms(self.clock_ms())})

        return await self._answer(request, answer)

    # -- page -------------------------------------------------------------------------
    def _file(self, request: web.Request, name: str) -> web.Response:
        asset = self.assets.get(name)
        if asset is None:
            return _refusal(404, "not_found", f"no report asset {name!r}")
        headers = {**_PAGE_HEADERS, "ETag": asset.etag}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, content_type=asset.content_type, headers=headers)

    async def page(self, request: web.Request) -> web.Response:
        if "index.html" not in self.assets:
            return _refusal(500, "report_page_missing", _MISSING_ASSETS)
        return self._file(request, "index.html")

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html":
            return _refusal(404, "not_found", "the page is at /sessions")
        return self._file(request, name)


REPORT = web.AppKey("sessions_report", Report)


def _limits(settings: Settings, report_settings: ReportSettings) -> Limits:
    rules = [settings.rules, *settings.project_rules.values()]
    return Limits(
        max_open=report_settings.max_open,
        scan_limit=report_settings.scan_limit,
        longest_session_ms=max(r.max_session_duration_ms + r.inactivity_timeout_ms for r in rules),
    )


def setup_report(
    app: web.Application,
    *,
    store: ReportStore | None = None,
    settings: Settings | None = None,
    report_settings: ReportSettings | None = None,
    clock_ms: Callable[[], int] | None = None,
    api_keys: Mapping[str, str] | None = None,
    auth_failures: RateLimiter | None = None,
) -> None:
    """Mount the report on ``app``. Without ``store``, a Redis store from the settings
    (``SESSIONIZER_REDIS_URL``, ``SESSIONIZER_REDIS_KEY_PREFIX``) is opened when the app
    starts and closed when it stops. Nothing is mounted when
    ``SESSIONIZER_REPORT_ENABLED`` is false. ``api_keys`` (``{key: project}``) open
    their own project; ``SESSIONIZER_REPORT_TOKEN`` opens all (a weak token raises
    :class:`~pipeline.exceptions.ConfigError`)."""
    report_settings = report_settings or load_report_settings()
    if not report_settings.enabled:
        return
    token = report_settings.token.get_secret_value()
    if token:
        check_secret("SESSIONIZER_REPORT_TOKEN", token, "the token")
    report = Report(
        token,
        api_keys=api_keys,
        rate=RateLimiter(report_settings.rate_limit, report_settings.rate_burst),
        auth_failures=auth_failures,
    )
    if clock_ms is not None:
        report.clock_ms = clock_ms
    app[REPORT] = report

    async def store_context(app: web.Application) -> AsyncIterator[None]:
        pipeline_settings = settings or load_settings()
        limits = _limits(pipeline_settings, report_settings)
        if store is not None:
            report.data = SessionData(store, limits)
            yield
            return
        from pipeline.store.connection import redis_client
        from pipeline.store.redis import RedisStore

        # the same client as the worker's: password, TLS, timeouts, a bounded pool
        redis_store = RedisStore(redis_client(pipeline_settings), pipeline_settings.redis_key_prefix)
        report.data = SessionData(redis_store, limits)
        if not report.token:
            log.info(
                "the Sessions report's API opens to the API keys, each for its own project; "
                "set SESSIONIZER_REPORT_TOKEN for an operator token that sees every project"
            )
        try:
            yield
        finally:
            report.data = None
            await redis_store.close()

    app.cleanup_ctx.append(store_context)
    router = app.router
    router.add_get("/sessions", report.page)
    router.add_get("/sessions/assets/{name}", report.asset)
    router.add_get("/sessions/{session_id}", report.page)
    router.add_get("/api/sessions", report.list_sessions)
    router.add_get("/api/sessions/stats", report.session_stats)
    router.add_get("/api/sessions/{session_id}", report.session)
