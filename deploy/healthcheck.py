"""Container health probe: GET a health URL; exit 0 only on HTTP 200 with a healthy JSON body.

Healthy bodies: the worker's ``GET /healthz`` answers ``{"ok": true, "partitions": [...]}``,
the gateway's ``{"status": "ok"}`` (``/readyz``: ``{"status": "ready"}``).

The runtime image has no curl or wget, so the Dockerfile's HEALTHCHECK (and the
compose file's) run this with the image's Python, standard library only:

    python /app/healthcheck.py                      # the worker: port $SESSIONIZER_WEB_PORT (6066)
    python /app/healthcheck.py http://127.0.0.1:8081/healthz   # the gateway (its admin port)

Exit status: 0 healthy, 1 anything else (connection refused, timeout, non-200,
a body that is not a JSON object, an ``ok`` that is not true, a ``status`` other
than ``ok``/``ready``). One line on stderr says why.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0
HEALTHY_STATUS = ("ok", "ready")


def default_url() -> str:
    port = os.environ.get("SESSIONIZER_WEB_PORT") or "6066"
    return f"http://127.0.0.1:{port}/healthz"


def check(url: str, timeout: float = TIMEOUT_S) -> str | None:
    """``None`` when healthy, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
            body = response.read(65536)
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"
    if status != 200:
        return f"{url}: HTTP {status}"
    try:
        payload = json.loads(body)
    except ValueError:
        return f"{url}: body is not JSON"
    if not isinstance(payload, dict):
        return f"{url}: body is not a JSON object"
    if "ok" in payload and payload["ok"] is not True:
        return f"{url}: ok is {payload['ok']!r}"
    if "status" in payload and payload["status"] not in HEALTHY_STATUS:
        return f"{url}: status is {payload['status']!r}"
    if "ok" not in payload and "status" not in payload:
        return f"{url}: body has neither ok nor status"
    return None


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else default_url()
    problem = check(url)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
