"""CORS for browser clients on other origins (the Exceptionless browser client, a web app).

``SESSIONIZER_GATEWAY_CORS_ALLOWED_ORIGINS`` lists the origins allowed to call the
gateway from a browser, comma-separated (``https://app.example.com,http://localhost:3000``),
or ``*`` for any. The default is none: browsers allow only pages the gateway serves
itself (the Sessions report), and servers, which send no preflight, are not affected.

For an allowed ``Origin``:

- a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered 204 with
  ``Access-Control-Allow-Origin`` (the origin), ``-Allow-Methods`` (GET, POST, OPTIONS),
  ``-Allow-Headers`` (the headers asked for; the clients send ``Authorization``,
  ``Content-Type``, ``Accept``), ``-Max-Age`` (one day);
- every answer (refusals included) carries ``Access-Control-Allow-Origin`` and
  ``Access-Control-Expose-Headers`` with the headers the Exceptionless clients read
  (``X-Exceptionless-ConfigVersion``, ``X-RateLimit-Remaining``) and ``Retry-After``.

A preflight from another origin is refused 403 ``cors_origin_not_allowed`` (so the
browser stops there); its plain requests get no CORS headers (so the browser does not
hand the answer to the page). No cookies are used: ``Allow-Credentials`` is never sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Accept"
EXPOSE_HEADERS = "X-Exceptionless-ConfigVersion, X-RateLimit-Limit, X-RateLimit-Remaining, Retry-After"
MAX_AGE_S = 86_400
VARIABLE = "SESSIONIZER_GATEWAY_CORS_ALLOWED_ORIGINS"


def parse_origins(value: str) -> frozenset[str]:
    """The allowed origins of the setting (``*`` for any); raises ValueError for an entry that
    is not ``scheme://host[:port]``."""
    origins = set()
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        if entry == "*":
            origins.add("*")
            continue
        parts = urlsplit(entry)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
            raise ValueError(
                f"{entry!r} is not an origin: give scheme://host[:port], e.g. "
                "https://app.example.com, comma-separated, or * for any"
            )
        origins.add(f"{parts.scheme}://{parts.netloc}".lower())
    return frozenset(origins)


def cors_middleware(allowed: frozenset[str]) -> Middleware:
    """The middleware for these origins (outermost, so refusals carry the headers too)."""
    any_origin = "*" in allowed

    def allows(origin: str) -> bool:
        return any_origin or origin.rstrip("/").lower() in allowed

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or not allowed:
            return await handler(request)
        preflight = (
            request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        )
        if not allows(origin):
            if preflight:
                return web.Response(
                    status=403,
                    content_type="application/json",
                    body=orjson.dumps({
                        "error": "cors_origin_not_allowed",
                        "message": f"the origin {origin} may not call this gateway from a "
                        f"browser; add it to {VARIABLE}",
                    }),
                )  # fmt: skip
            return await handler(request)
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if preflight:
            asked = request.headers.get("Access-Control-Request-Headers", "").strip()
            headers.update({
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": asked or ALLOW_HEADERS,
                "Access-Control-Max-Age": str(MAX_AGE_S),
            })  # fmt: skip
            return web.Response(status=204, headers=headers)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # redirects and the like: keep them readable
            exc.headers.update(headers)
            exc.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            raise
        response.headers.update(headers)
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response

    return cors
