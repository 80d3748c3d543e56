"""Who may call the gateway and the report: credentials, per-client limits, refusals.

Shared by the ingestion API (:mod:`pipeline.gateway.app`) and the Sessions report
(:mod:`pipeline.report.api`). A credential is ``Authorization: Bearer <x>`` (or
``?access_token=<x>``). A client (its peer address) that fails authentication
more than ``SESSIONIZER_GATEWAY_AUTH_FAILURES_PER_MINUTE`` times a minute is
answered 429 (``"limit": "auth_failures"``) until its budget refills, whatever it
sends; every 429 names its limit and carries ``Retry-After``.

A client is its TCP peer address, unless the peer is one of the trusted proxies
(``SESSIONIZER_GATEWAY_TRUSTED_PROXIES``, set on the app as
:data:`TRUSTED_PROXIES`): then the nearest address in ``X-Forwarded-For`` that
is not a trusted proxy.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web

from pipeline.ratelimit import RateLimiter, retry_after

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: the proxies whose X-Forwarded-For is believed (none by default)
TRUSTED_PROXIES = web.AppKey("trusted_proxies", tuple)


def parse_networks(text: str, variable: str = "SESSIONIZER_GATEWAY_TRUSTED_PROXIES") -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks; a bad one raises ``ValueError`` naming it."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{variable}: {item!r} is not an IP address or network") from None
    return tuple(networks)


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def refusal(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    """A JSON refusal ``{"error", "message", ...}``, never cached."""
    return web.Response(
        body=orjson.dumps({"error": code, "message": message, **extra}),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def bearer(request: web.Request) -> str:
    """The credential of a request: ``Authorization: Bearer <x>`` or ``?access_token=<x>``."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.query.get("access_token", "").strip()


def client_address(request: web.Request) -> str:
    """Who a per-client limit counts: the peer address, or behind trusted proxies the
    nearest untrusted address they forwarded (``X-Forwarded-For``, right to left)."""
    peer = request.remote or "unknown"
    networks = request.app.get(TRUSTED_PROXIES, ())
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")]
    for hop in reversed([hop for hop in hops if hop]):
        if not _trusted(hop, networks):
            return hop
    return peer


def rate_limited(limit: str, what: str, wait_s: float) -> web.Response:
    """429 ``rate_limited`` naming the ``limit`` that was reached, with ``Retry-After``."""
    seconds = retry_after(wait_s)
    return refusal(
        429,
        "rate_limited",
        f"{what}; retry after {seconds} s",
        headers={"Retry-After": str(seconds)},
        limit=limit,
    )


def find_key(keys: Mapping[str, str], given: str) -> str | None:
    """The project of API key ``given`` (compared in constant time), or None."""
    project = None
    for known, known_project in keys.items():
        if hmac.compare_digest(known.encode(), given.encode()):
            project = known_project
    return project


def auth_failure_refusal(request: web.Request, failures: RateLimiter) -> web.Response | None:
    """The 429 for a client address that failed authentication too often, else None."""
    wait_s = failures.blocked(client_address(request))
    if wait_s <= 0:
        return None
    per_minute = round(failures.rate * 60)
    return rate_limited(
        "auth_failures",
        f"more than {per_minute} failed authentications per minute from this address",
        wait_s,
    )


def authenticate(
    request: web.Request, keys: Mapping[str, str], failures: RateLimiter
) -> tuple[str, str] | web.Response:
    """``(api key, project)``; or 429 for a client past its failed-authentication limit;
    or 401 (counted as a failure of the client's address)."""
    blocked = auth_failure_refusal(request, failures)
    if blocked is not None:
        return blocked
    key = bearer(request)
    project = find_key(keys, key) if key else None
    if project is None:
        failures.acquire(client_address(request))
        return refusal(
            401,
            "unauthorized",
            "missing or unknown API key; send Authorization: Bearer <api key>",
            headers=UNAUTHORIZED,
        )
    return key, project
