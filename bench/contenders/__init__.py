"""The contenders other than the worker, each run as ``python -m bench.contenders.<name>``.

Each reads the whole input topic once and prints two lines on stdout, which the
harness times as they arrive::

    BENCH READY <monotonic s> <process CPU s>     partitions assigned (Quix: first record)
    BENCH DONE <monotonic s> <process CPU s> <records> <events>

``events`` counts what the records carry: a batch record its elements, anything
else (a bad record included) one.
"""

from __future__ import annotations

import sys
import time

import orjson


def events_in(value: bytes | None) -> int:
    try:
        parsed = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return 1
    return len(parsed) if isinstance(parsed, list) and parsed else 1


def report(kind: str, *extra: object) -> None:
    parts = ["BENCH", kind, f"{time.monotonic():.6f}", f"{time.process_time():.6f}", *map(str, extra)]
    sys.stdout.write(" ".join(parts) + "\n")
    sys.stdout.flush()
