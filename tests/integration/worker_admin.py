"""The worker's admin HTTP port (``/readyz``, ``/healthz``) as the integration tests read it."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson

from pipeline.config import Settings


def admin(settings: Settings, path: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """GET ``path`` on the worker's admin port: the status and the JSON body (errors too)."""
    url = f"http://{settings.web_host}:{settings.web_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())
