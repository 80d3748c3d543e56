"""The workers hash in Redis: each worker announces itself there (id, partitions,
epochs, web address, last seen); ``sessionizer status`` reads it."""

from __future__ import annotations

import os
import socket

import orjson

__all__ = ["WORKER_RETENTION_S", "worker_entry", "workers_key"]

#: A worker silent for this long is dropped from the workers hash (by the others).
WORKER_RETENTION_S = 3600


def workers_key(prefix: str) -> str:
    """The hash where the workers announce themselves: worker id -> JSON entry."""
    return f"{prefix}:workers"


def worker_entry(
    partitions: list[int], epochs: dict[int, int], web_url: str, interval_s: float, now_ms: int
) -> tuple[str, bytes]:
    """This process's ``(worker id, entry)`` for the workers hash."""
    host, pid = socket.gethostname(), os.getpid()
    entry = {
        "id": f"{host}:{pid}", "host": host, "pid": pid, "web": web_url,
        "partitions": partitions, "epochs": {str(p): e for p, e in epochs.items()},
        "interval_s": interval_s, "seen_ms": now_ms,
    }
    return f"{host}:{pid}", orjson.dumps(entry)
