"""Token buckets: ``rate`` units per second, ``burst`` at once, one bucket per key.

The gateway keeps three kinds (docs/security.md): events per second per API key
(a POST costs its number of events, any other call one), failed authentications
per client address, and report requests per client address. The clock is
injectable for tests; the buckets are bounded (the least recently used are
forgotten past ``max_keys``), so hostile clients cannot grow them without end.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MAX_KEYS = 100_000


class RateLimiter:
    """Token buckets keyed by any string (an API key, a client address).

    ``rate == 0`` turns limiting off. :meth:`acquire` takes ``cost`` tokens and
    returns 0 when the call may pass, else the seconds until it could (for
    ``Retry-After``). A cost larger than the burst passes when the bucket is full
    and leaves it in debt, so a large batch is counted whole.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        # key -> (tokens, last refill time), least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def _wait(self, tokens: float, need: float) -> float:
        return max(0.0, (min(need, self.burst) - tokens) / self.rate)

    def acquire(self, key: str, cost: float = 1.0) -> float:
        if self.rate == 0:
            return 0.0
        now = self._clock()
        tokens = self._tokens(key, now)
        need = min(cost, self.burst)
        if tokens >= need:
            self._store(key, tokens - cost, now)
            return 0.0
        self._store(key, tokens, now)
        return self._wait(tokens, need)

    def blocked(self, key: str) -> float:
        """Seconds until ``key`` has a token again (0 when it has one); takes none."""
        if self.rate == 0 or key not in self._buckets:
            return 0.0
        tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= 1.0 else self._wait(tokens, 1.0)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)


def retry_after(wait_s: float) -> int:
    """Whole seconds for ``Retry-After``: at least 1."""
    return max(1, int(wait_s + 0.999))
