"""Synthetic user traffic: a seeded, deterministic model of clients sending SPEC events.

Pure: no I/O, no wall clock. :class:`TrafficModel` simulates ``users`` people of
a few projects living through sessions, and yields Kafka records
``(key, value, timestamp_ms)`` in arrival order; ``timestamp_ms`` is the record
timestamp (the arrival time), the event ``timestamp`` fields are on each
client's own clock. The same arguments always give the same records.

What a simulated user does, over and over:

- starts a session: an auto session (keyed by ``user_id``) or, at
  ``manual_ratio``, a client-chosen ``session_id`` (32 hex chars) carried on
  every event; most sessions open with a ``session`` event
  (``start_event_ratio``), the others just start using the app;
- uses the app: ``usage`` (``source`` = feature), ``log``, ``error`` (source =
  exception type, a message, ``data["@error"]`` with a stack trace), ``404``
  and one custom type per project, separated by think times (a log-normal
  around ``think_median_s``, at most ``think_max_s``), with ``@environment``
  and ``@request`` data; while the session lasts, a ``heartbeat`` every
  ``heartbeat_interval_ms`` of event time, counted from the session start;
- leaves: a ``sessionend`` (``end_ratio``), a ``heartbeat`` with
  ``close: true`` (``close_ratio``), or nothing at all (abandoned: the pipeline
  closes it by inactivity), then stays away ``offline_*`` before the next session.

Realism on the wire: per-client clock skew (larger on clients that send
``sent_at``, which the pipeline corrects), network latency, clients that batch
events into JSON arrays (``batch_ratio`` of users; heartbeats go out at once),
``duplicate_ratio`` of events sent twice (a retry, same ``id``),
``out_of_order_ratio`` of events held back and sent after a later one, and
``bad_ratio`` of records that the pipeline must reject (:data:`BAD_KINDS`).

Sessions are planned so that the pipeline sees each as exactly one session:
think times stay under the inactivity timeout, heartbeats fill the gaps, and
after an abandoned auto session the user stays away at least
``offline_min_after_abandon_s`` (keep it above ``SESSIONIZER_INACTIVITY_TIMEOUT``).
:attr:`TrafficModel.stats` and :attr:`TrafficModel.sessions` say what was
emitted so far, for tests and benchmarks to check the pipeline against.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, NamedTuple

import orjson

__all__ = [
    "BAD_KINDS",
    "BAD_KIND_CODES",
    "HEARTBEAT_INTERVAL_MS",
    "Preload",
    "Record",
    "SessionSummary",
    "TrafficModel",
    "TrafficStats",
]

HEARTBEAT_INTERVAL_MS: Final = 30_000

#: Kinds of deliberately bad records and the dead-letter code each must get.
BAD_KIND_CODES: Final[dict[str, str]] = {
    "invalid_json": "invalid_json",
    "no_identity": "no_identity",
    "too_large": "too_large",
    "missing_type": "invalid_event",
    "bad_timestamp": "invalid_event",
}
BAD_KINDS: Final = tuple(BAD_KIND_CODES)

_MASK64: Final = (1 << 64) - 1
_START, _ACT, _BEAT, _FLUSH = 0, 1, 2, 3
_END, _CLOSE, _ABANDON = "end", "close", "abandon"
_MAX_BATCH: Final = 20


class Record(NamedTuple):
    """One Kafka record: key (routing identity, UTF-8) or None, value, timestamp."""

    key: bytes | None
    value: bytes
    timestamp_ms: int


@dataclass(slots=True)
class SessionSummary:
    """What one simulated session sent, as far as emitted.

    ``first_ms``/``last_ms`` are event timestamps on the client's clock (the
    pipeline corrects them by ``sent_at`` when the client sends it).
    ``ended`` says a ``sessionend`` or closing heartbeat was emitted; otherwise
    the pipeline closes the session by inactivity.
    """

    project: str
    user_id: str
    session_id: str | None
    manual: bool
    has_start_event: bool
    first_ms: int = 0
    last_ms: int = 0
    event_count: int = 0
    heartbeat_count: int = 0
    error_count: int = 0
    duplicates: int = 0
    ended: bool = False
    closed_by_heartbeat: bool = False

    @property
    def key(self) -> str:
        """The record key of the session's events."""
        return self.session_id if self.session_id is not None else self.user_id

    @property
    def expected_close_reason(self) -> str:
        return "ended" if self.ended else "timeout"


@dataclass(slots=True)
class TrafficStats:
    """Counts of what the model has emitted so far.

    ``valid_events`` and ``by_type`` count distinct events (heartbeats
    included); ``duplicates`` the extra copies; ``events_sent`` everything on
    the wire, a bad record counting as one event.
    """

    records: int = 0
    batch_records: int = 0
    events_sent: int = 0
    valid_events: int = 0
    heartbeats: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    out_of_order: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    sessions_started: int = 0
    sessions_manual: int = 0
    sessions_ended: int = 0
    sessions_closed_by_heartbeat: int = 0

    @property
    def bad_records(self) -> int:
        return sum(self.bad.values())

    @property
    def expected_close_reasons(self) -> Counter[str]:
        """``close_reason`` -> sessions, once the pipeline has closed them all."""
        return Counter(
            {"ended": self.sessions_ended, "timeout": self.sessions_started - self.sessions_ended}
        )

    @property
    def expected_dead_letters(self) -> Counter[str]:
        """Dead-letter code -> records the pipeline must reject."""
        codes: Counter[str] = Counter()
        for kind, count in self.bad.items():
            codes[BAD_KIND_CODES[kind]] += count
        return codes


class Preload(NamedTuple):
    records: list[Record]
    stats: TrafficStats
    sessions: list[SessionSummary]


@dataclass(slots=True)
class _Project:
    name: str
    host: str
    features: tuple[str, ...]
    paths: tuple[str, ...]
    loggers: tuple[str, ...]
    custom: str


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_PROJECTS: Final = (
    _Project(
        "shop",
        "shop.example.com",
        _words("search view-product add-to-cart remove-from-cart checkout apply-coupon wishlist"),
        ("/", "/search", "/product/{n}", "/category/{n}", "/cart", "/checkout", "/account"),
        ("app.cart", "app.payments", "app.catalog"),
        "purchase",
    ),
    _Project(
        "docs",
        "docs.example.com",
        ("search", "read-article", "copy-snippet", "rate-article", "switch-version"),
        ("/", "/docs/getting-started", "/docs/api/{n}", "/search", "/changelog"),
        ("docs.search", "docs.render"),
        "feedback",
    ),
    _Project(
        "admin",
        "admin.example.com",
        ("login", "view-dashboard", "export-report", "edit-user", "invite-member", "change-plan"),
        ("/dashboard", "/users", "/users/{n}", "/reports", "/billing", "/settings"),
        ("admin.auth", "admin.reports", "admin.billing"),
        "export",
    ),
)
_PROJECT_WEIGHTS: Final = (5, 3, 2)
_FIRST: Final = _words(
    "Ana Ben Chloe Dmitri Elif Farah Goran Hana Ivan Jonas Keiko Liam Maria Noah Olga Priya "
    "Quentin Rosa Sven Tariq Uma Vera Wei Yusuf Zoe"
)
_LAST: Final = _words(
    "Silva Novak Okafor Larsen Tanaka Moreau Kowalski Haddad Fischer Costa Ivanova Nguyen Rossi "
    "Berg Khan Lopez"
)
_DOMAINS: Final = ("example.com", "mail.example.org", "corp.example.net")
_BROWSERS: Final = (
    (
        "Chrome",
        "126.0",
        "Mozilla/5.0 ({os}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    ),
    ("Firefox", "127.0", "Mozilla/5.0 ({os}; rv:127.0) Gecko/20100101 Firefox/127.0"),
    (
        "Safari",
        "17.5",
        "Mozilla/5.0 ({os}) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    ),
    (
        "Edge",
        "126.0",
        "Mozilla/5.0 ({os}) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
    ),
)
_OSES: Final = (
    ("Windows", "11", "Windows NT 10.0; Win64; x64", "desktop"),
    ("macOS", "14.5", "Macintosh; Intel Mac OS X 14_5", "desktop"),
    ("Linux", "6.9", "X11; Linux x86_64", "desktop"),
    ("Android", "14", "Linux; Android 14; Pixel 8", "mobile"),
    ("iOS", "17.5", "iPhone; CPU iPhone OS 17_5 like Mac OS X", "mobile"),
)
_ERRORS: Final = (
    (
        "TypeError",
        "Cannot read properties of undefined (reading 'price')",
        (
            "renderCart (app.js:412:17)",
            "CartView.update (app.js:388:9)",
            "dispatch (vendor.js:1201:5)",
        ),
    ),
    (
        "ReferenceError",
        "analytics is not defined",
        ("trackClick (app.js:77:3)", "HTMLButtonElement.onclick (app.js:71:12)"),
    ),
    (
        "System.NullReferenceException",
        "Object reference not set to an instance of an object.",
        (
            "Shop.Cart.Total() in Cart.cs:line 88",
            "Shop.Web.CartController.Get() in CartController.cs:line 41",
        ),
    ),
    (
        "System.TimeoutException",
        "The operation has timed out.",
        (
            "Shop.Payments.Client.Charge() in Client.cs:line 120",
            "Shop.Web.CheckoutController.Post() in CheckoutController.cs:line 64",
        ),
    ),
    (
        "HttpError",
        "Request failed with status code 502",
        ("fetchJson (api.js:31:11)", "loadReport (reports.js:58:20)"),
    ),
    (
        "ChunkLoadError",
        "Loading chunk 42 failed.",
        ("requireEnsure (runtime.js:150:22)", "lazyRoute (router.js:19:7)"),
    ),
)
_LOG_LINES: Final = (
    ("info", "user preferences loaded"),
    ("info", "cache warmed in 84 ms"),
    ("warn", "slow response from upstream: 2300 ms"),
    ("debug", "feature flag new-nav=on"),
    ("error", "retrying request (attempt 2 of 3)"),
    ("info", "websocket reconnected"),
)
_MISSING_PATHS: Final = (
    "/favicon.ico",
    "/old-pricing",
    "/wp-login.php",
    "/assets/logo@3x.png",
    "/docs/v1/removed-page",
)
_ACTIVITY_TYPES: Final = ("usage", "log", "error", "404", "custom")
_ACTIVITY_WEIGHTS: Final = (66, 17, 6, 5, 6)


def _mix64(n: int, key: int) -> int:
    """A bijection of 64-bit integers: distinct ``n`` give distinct results."""
    x = (n * 0x9E3779B97F4A7C15) & _MASK64
    x ^= x >> 29
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 32
    return x ^ key


@lru_cache(maxsize=4096)
def _clock_text(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of epoch seconds (UTC); cached, times repeat a lot."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _format_utc(ms: int) -> str:
    """Same text as :func:`pipeline.core.timefmt.format_ms`, faster."""
    seconds, millis = divmod(ms, 1000)
    return f"{_clock_text(seconds)}.{millis:03d}Z"


def _format_with_offset(ms: int, offset_min: int) -> str:
    seconds, millis = divmod(ms + offset_min * 60_000, 1000)
    sign = "+" if offset_min >= 0 else "-"
    hours, minutes = divmod(abs(offset_min), 60)
    return f"{_clock_text(seconds)}.{millis:03d}{sign}{hours:02d}:{minutes:02d}"


class _Sent:
    """Bookkeeping for one event of a pending record, applied when it is emitted."""

    __slots__ = ("dup", "ends", "ooo", "session", "ts_ms", "type")

    def __init__(self, type_: str, session: _Session, ts_ms: int, *, ends: bool = False) -> None:
        self.type = type_
        self.session = session
        self.ts_ms = ts_ms
        self.ends = ends
        self.dup = False
        self.ooo = False


@dataclass(slots=True)
class _Session:
    summary: SessionSummary
    ending: str
    planned_end_ms: int
    path: str
    emitted: bool = False


@dataclass(slots=True)
class _User:
    index: int
    user_id: str
    user_name: str | None
    project: _Project
    environment: dict[str, str]
    user_agent: str
    stamp_style: str  # "z", "offset" or "int"
    utc_offset_min: int
    skew_ms: int
    sends_sent_at: bool
    batching: bool
    flush_ms: int
    session: _Session | None = None
    gen: int = 0
    flush_token: int = 0
    last_arrival_ms: int = 0
    buffer: list[tuple[dict[str, Any], _Sent]] = field(default_factory=list)
    held: list[tuple[dict[str, Any], _Sent]] = field(default_factory=list)

    def stamp(self, client_ms: int) -> str | int:
        if self.stamp_style == "int":
            return client_ms
        if self.stamp_style == "offset":
            return _format_with_offset(client_ms, self.utc_offset_min)
        return _format_utc(client_ms)


_Pending = tuple[int, int, bytes | None, bytes, str | None, tuple[_Sent, ...], bool]


class TrafficModel:
    """Seeded simulation of ``users`` clients; iterate it for records in arrival order.

    ``start_ms`` is the arrival time the simulation starts at (first sessions
    begin within ``ramp_s`` of it). ``speed`` is informational for pacing: a
    live producer sends a record when the wall clock has advanced
    ``(timestamp_ms - start_ms) / speed`` since it began (see :meth:`wall_offset_s`).
    """

    def __init__(
        self,
        users: int,
        seed: int,
        start_ms: int,
        bad_ratio: float = 0.005,
        *,
        speed: float = 1.0,
        manual_ratio: float = 0.3,
        start_event_ratio: float = 0.85,
        end_ratio: float = 0.6,
        close_ratio: float = 0.15,
        duplicate_ratio: float = 0.01,
        out_of_order_ratio: float = 0.02,
        batch_ratio: float = 0.25,
        sent_at_ratio: float = 0.3,
        think_median_s: float = 8.0,
        think_max_s: float = 60.0,
        session_median_s: float = 240.0,
        session_max_s: float = 2400.0,
        offline_mean_s: float = 90.0,
        offline_min_after_abandon_s: float = 400.0,
        heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS,
        ramp_s: float = 60.0,
        max_event_bytes: int = 65_536,
    ) -> None:
        if users < 1:
            raise ValueError("users must be >= 1")
        if speed <= 0:
            raise ValueError("speed must be > 0")
        if not 0 <= bad_ratio < 1:
            raise ValueError("bad_ratio must be in [0, 1)")
        for name, ratio in (
            ("manual_ratio", manual_ratio),
            ("start_event_ratio", start_event_ratio),
            ("end_ratio", end_ratio),
            ("close_ratio", close_ratio),
            ("duplicate_ratio", duplicate_ratio),
            ("out_of_order_ratio", out_of_order_ratio),
            ("batch_ratio", batch_ratio),
            ("sent_at_ratio", sent_at_ratio),
        ):
            if not 0 <= ratio <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if end_ratio + close_ratio > 1:
            raise ValueError("end_ratio + close_ratio must be <= 1")
        if not 0 < think_median_s <= think_max_s:
            raise ValueError("need 0 < think_median_s <= think_max_s")
        if not 0 < session_median_s <= session_max_s:
            raise ValueError("need 0 < session_median_s <= session_max_s")
        if heartbeat_interval_ms <= 0 or offline_mean_s < 0 or offline_min_after_abandon_s < 0:
            raise ValueError("intervals must be positive")

        self.users = users
        self.seed = seed
        self.start_ms = start_ms
        self.bad_ratio = bad_ratio
        self.speed = speed
        self.manual_ratio = manual_ratio
        self.start_event_ratio = start_event_ratio
        self.end_ratio = end_ratio
        self.close_ratio = close_ratio
        self.duplicate_ratio = duplicate_ratio
        self.out_of_order_ratio = out_of_order_ratio
        self.batch_ratio = batch_ratio
        self.sent_at_ratio = sent_at_ratio
        self.think_median_s = think_median_s
        self.think_max_s = think_max_s
        self.session_median_s = session_median_s
        self.session_max_s = session_max_s
        self.offline_mean_s = offline_mean_s
        self.offline_min_after_abandon_s = offline_min_after_abandon_s
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_event_bytes = max_event_bytes

        self.stats = TrafficStats()
        self.sessions: list[SessionSummary] = []
        self._rng = random.Random(seed)
        self._id_key = self._rng.getrandbits(64)
        self._event_serial = 0
        self._session_serial = 0
        self._seq = 0
        self._accepting = True
        self._p_bad = bad_ratio / (1 - bad_ratio)
        self._agenda: list[tuple[int, int, int, int, int]] = []
        self._out: list[_Pending] = []
        self._users = [self._make_user(i) for i in range(users)]
        ramp_ms = max(0, int(ramp_s * 1000))
        for user in self._users:
            self._schedule(start_ms + self._rng.randint(0, ramp_ms), _START, user, 0)

    # -- public ---------------------------------------------------------------

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        out, agenda = self._out, self._agenda
        while not out or (agenda and agenda[0][0] < out[0][0]):
            if not agenda:
                raise StopIteration
            self._step()
        arrival_ms, _, key, value, bad_kind, items, batch = heapq.heappop(out)
        self._account(bad_kind, items, batch)
        return Record(key, value, arrival_ms)

    def stop_new_sessions(self) -> None:
        """Let sessions in progress finish; start no new ones. Iteration then ends."""
        self._accepting = False

    def preload(self, events: int, *, drain: bool = False) -> Preload:
        """Records until ``events`` events were sent (a batch may overshoot a little).

        With ``drain``, the sessions in progress then run to their planned end
        (so every session is complete: ended, or abandoned) and no new one starts.
        """
        records: list[Record] = []
        for record in self:
            records.append(record)
            if self.stats.events_sent >= events:
                if not drain:
                    break
                self.stop_new_sessions()
        return Preload(records, self.stats, self.sessions)

    def wall_offset_s(self, timestamp_ms: int) -> float:
        """Seconds after the start of a live run at which a record is due, at ``speed``."""
        return (timestamp_ms - self.start_ms) / 1000 / self.speed

    def nominal_rate(self) -> float:
        """Rough events per second of simulated time once all users are going."""
        think_mean_s = min(self.think_max_s, self.think_median_s * math.exp(0.9**2 / 2))
        session_mean_s = min(self.session_max_s, self.session_median_s * math.exp(0.8**2 / 2))
        abandon = 1 - self.end_ratio - self.close_ratio
        offline_s = self.offline_mean_s + abandon * (1 - self.manual_ratio) * (
            self.offline_min_after_abandon_s
        )
        active_share = session_mean_s / (session_mean_s + offline_s)
        per_active_s = 1 / think_mean_s + 1000 / self.heartbeat_interval_ms
        return (
            self.users * active_share * per_active_s * (1 + self.duplicate_ratio + self.bad_ratio)
        )

    # -- simulation -------------------------------------------------------------

    def _make_user(self, index: int) -> _User:
        rng = self._rng
        project = rng.choices(_PROJECTS, _PROJECT_WEIGHTS)[0]
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        if rng.random() < 0.6:
            user_id = f"{first.lower()}.{last.lower()}{index}@{rng.choice(_DOMAINS)}"
        else:
            user_id = f"usr_{_mix64(index, self._id_key):016x}"
        browser, browser_version, ua_template = rng.choice(_BROWSERS)
        os_name, os_version, ua_os, device = rng.choice(_OSES)
        sends_sent_at = rng.random() < self.sent_at_ratio
        skew_ms = int(rng.gauss(0, 1500))
        if sends_sent_at and rng.random() < 0.3:
            skew_ms += rng.choice((-1, 1)) * rng.randint(20_000, 120_000)
        style = rng.choices(("z", "offset", "int"), (6, 2, 2))[0]
        return _User(
            index=index,
            user_id=user_id,
            user_name=f"{first} {last}" if rng.random() < 0.9 else None,
            project=project,
            environment={
                "browser": browser,
                "browser_version": browser_version,
                "os": os_name,
                "os_version": os_version,
                "device": device,
                "locale": rng.choice(("en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "pt-BR")),
            },
            user_agent=ua_template.format(os=ua_os),
            stamp_style=style,
            utc_offset_min=rng.choice((-300, -240, 0, 60, 120, 330, 540)),
            skew_ms=skew_ms,
            sends_sent_at=sends_sent_at,
            batching=rng.random() < self.batch_ratio,
            flush_ms=rng.randint(2_000, 10_000),
        )

    def _schedule(self, at_ms: int, action: int, user: _User, token: int) -> None:
        self._seq += 1
        heapq.heappush(self._agenda, (at_ms, self._seq, user.index, action, token))

    def _step(self) -> None:
        at_ms, _, index, action, token = heapq.heappop(self._agenda)
        user = self._users[index]
        if action == _START:
            self._start_session(user, at_ms)
        elif action == _FLUSH:
            if token == user.flush_token and user.buffer:
                self._flush(user, at_ms)
        elif token == user.gen and user.session is not None:
            if action == _ACT:
                self._activity(user, at_ms)
            else:
                self._heartbeat(user, at_ms)

    def _think_ms(self) -> int:
        seconds = self._rng.lognormvariate(math.log(self.think_median_s), 0.9)
        return int(min(max(seconds, 0.5), self.think_max_s) * 1000)

    def _start_session(self, user: _User, now_ms: int) -> None:
        if not self._accepting:
            return
        rng = self._rng
        self._session_serial += 1
        manual = rng.random() < self.manual_ratio
        session_id = None
        if manual:
            session_id = (
                f"{_mix64(self._session_serial, self._id_key):016x}{rng.getrandbits(64):016x}"
            )
        has_start = rng.random() < self.start_event_ratio
        draw = rng.random()
        ending = (
            _END
            if draw < self.end_ratio
            else _CLOSE
            if draw < self.end_ratio + self.close_ratio
            else _ABANDON
        )
        length_s = rng.lognormvariate(math.log(self.session_median_s), 0.8)
        length_ms = int(min(max(length_s, 20.0), self.session_max_s) * 1000)
        summary = SessionSummary(
            project=user.project.name,
            user_id=user.user_id,
            session_id=session_id,
            manual=manual,
            has_start_event=has_start,
        )
        session = _Session(summary, ending, now_ms + length_ms, self._path(user.project))
        user.session = session
        user.gen += 1
        if has_start:
            event = self._event(user, now_ms, "session")
            event["data"] = {"@environment": user.environment, "@request": self._request(user)}
            self._emit(user, now_ms, event, _Sent("session", session, event["_ts"]), holdable=False)
        else:
            self._activity_event(user, now_ms, holdable=False)
        self._schedule(now_ms + self.heartbeat_interval_ms, _BEAT, user, user.gen)
        self._schedule(now_ms + self._think_ms(), _ACT, user, user.gen)

    def _activity(self, user: _User, now_ms: int) -> None:
        session = user.session
        assert session is not None
        if now_ms >= session.planned_end_ms:
            self._end_session(user, session, now_ms)
            return
        self._activity_event(user, now_ms, holdable=True)
        self._schedule(now_ms + self._think_ms(), _ACT, user, user.gen)

    def _heartbeat(self, user: _User, now_ms: int) -> None:
        session = user.session
        assert session is not None
        event = self._event(user, now_ms, "heartbeat")
        self._send(user, now_ms, [(event, _Sent("heartbeat", session, event["_ts"]))], batch=False)
        self._schedule(now_ms + self.heartbeat_interval_ms, _BEAT, user, user.gen)

    def _end_session(self, user: _User, session: _Session, now_ms: int) -> None:
        held, user.held = user.held, []
        for pair in held:  # nothing was sent after them: in order after all
            self._send(user, now_ms, [pair], batch=False, release_held=False)
        if user.buffer:
            self._flush(user, now_ms)
        if session.ending == _END:
            event = self._event(user, now_ms, "sessionend")
            item = _Sent("sessionend", session, event["_ts"], ends=True)
            self._send(user, now_ms, [(event, item)], batch=False)
        elif session.ending == _CLOSE:
            event = self._event(user, now_ms, "heartbeat")
            event["close"] = True
            item = _Sent("heartbeat", session, event["_ts"], ends=True)
            self._send(user, now_ms, [(event, item)], batch=False)
        user.session = None
        user.gen += 1
        away_s = self._rng.expovariate(1 / self.offline_mean_s) if self.offline_mean_s else 0.0
        if session.ending == _ABANDON and not session.summary.manual:
            away_s += self.offline_min_after_abandon_s
        self._schedule(now_ms + 1000 + int(away_s * 1000), _START, user, 0)

    # -- events -------------------------------------------------------------------

    def _next_id(self) -> str:
        self._event_serial += 1
        return f"{_mix64(self._event_serial, self._id_key):016x}"

    def _event(
        self, user: _User, now_ms: int, type_: str, *, identity: bool = True
    ) -> dict[str, Any]:
        """A new event dict; ``_ts`` (client-clock ms) is removed before encoding."""
        client_ms = now_ms + user.skew_ms
        event: dict[str, Any] = {
            "id": self._next_id(),
            "type": type_,
            "timestamp": user.stamp(client_ms),
            "project": user.project.name,
        }
        if identity:
            event["user_id"] = user.user_id
            if user.user_name is not None:
                event["user_name"] = user.user_name
            if user.session is not None and user.session.summary.session_id is not None:
                event["session_id"] = user.session.summary.session_id
        event["_ts"] = client_ms
        return event

    def _path(self, project: _Project) -> str:
        return self._rng.choice(project.paths).replace("{n}", str(self._rng.randint(1, 999)))

    def _request(self, user: _User, path: str | None = None) -> dict[str, Any]:
        session = user.session
        return {
            "http_method": "GET",
            "host": user.project.host,
            "path": path or (session.path if session is not None else "/"),
            "user_agent": user.user_agent,
        }

    def _activity_event(self, user: _User, now_ms: int, *, holdable: bool) -> None:
        rng = self._rng
        session = user.session
        assert session is not None
        project = user.project
        kind = rng.choices(_ACTIVITY_TYPES, _ACTIVITY_WEIGHTS)[0]
        type_ = project.custom if kind == "custom" else kind
        event = self._event(user, now_ms, type_)
        data: dict[str, Any] = {"@environment": user.environment}
        if kind == "usage":
            feature = rng.choice(project.features)
            event["source"] = feature
            if rng.random() < 0.4:
                session.path = self._path(project)
            if feature in ("checkout", "export-report") or rng.random() < 0.1:
                event["value"] = round(rng.uniform(1, 500), 2)
            data["@request"] = self._request(user)
        elif kind == "log":
            level, message = rng.choice(_LOG_LINES)
            event["source"] = rng.choice(project.loggers)
            event["message"] = message
            data["@level"] = level
        elif kind == "error":
            exc_type, message, frames = rng.choice(_ERRORS)
            event["source"] = exc_type
            event["message"] = message
            data["@error"] = {
                "type": exc_type,
                "message": message,
                "stack_trace": "\n".join(f"   at {frame}" for frame in frames),
            }
            data["@request"] = self._request(user)
        elif kind == "404":
            missing = rng.choice(_MISSING_PATHS)
            event["source"] = f"https://{project.host}{missing}"
            data["@request"] = self._request(user, missing)
        else:
            event["source"] = rng.choice(project.features)
            event["value"] = (
                rng.randint(1, 5) if type_ == "feedback" else round(rng.uniform(5, 900), 2)
            )
        event["data"] = data
        self._emit(user, now_ms, event, _Sent(type_, session, event["_ts"]), holdable=holdable)

    def _emit(
        self, user: _User, now_ms: int, event: dict[str, Any], item: _Sent, *, holdable: bool
    ) -> None:
        """Send an event now, put it in the client's batch, or hold it back (out of order)."""
        if holdable and self._rng.random() < self.out_of_order_ratio:
            user.held.append((event, item))
        elif user.batching:
            user.buffer.append((event, item))
            if len(user.buffer) == 1:
                user.flush_token += 1
                self._schedule(now_ms + user.flush_ms, _FLUSH, user, user.flush_token)
            elif len(user.buffer) >= _MAX_BATCH:
                self._flush(user, now_ms)
        else:
            self._send(user, now_ms, [(event, item)], batch=False)

    def _flush(self, user: _User, now_ms: int) -> None:
        pairs, user.buffer = user.buffer, []
        user.flush_token += 1
        self._send(user, now_ms, pairs, batch=True)

    def _push(
        self,
        arrival_ms: int,
        key: bytes | None,
        value: bytes,
        bad_kind: str | None,
        items: tuple[_Sent, ...],
        batch: bool,
    ) -> None:
        self._seq += 1
        heapq.heappush(self._out, (arrival_ms, self._seq, key, value, bad_kind, items, batch))

    def _send(
        self,
        user: _User,
        now_ms: int,
        pairs: list[tuple[dict[str, Any], _Sent]],
        *,
        batch: bool,
        release_held: bool = True,
    ) -> None:
        rng = self._rng
        latency_ms = 15 + min(int(rng.expovariate(1 / 60)), 3000)
        arrival_ms = max(now_ms + latency_ms, user.last_arrival_ms + 1)
        user.last_arrival_ms = arrival_ms
        sent_at = user.stamp(now_ms + user.skew_ms) if user.sends_sent_at else None
        events = []
        for event, _ in pairs:
            event.pop("_ts", None)
            if sent_at is not None:
                event["sent_at"] = sent_at
            events.append(event)
        first = events[0]
        key = str(first.get("session_id") or first["user_id"]).encode()
        value = orjson.dumps(events if batch else first)
        self._push(arrival_ms, key, value, None, tuple(item for _, item in pairs), batch)
        for event, item in pairs:
            if item.type != "session" and not item.ends and rng.random() < self.duplicate_ratio:
                copy = _Sent(item.type, item.session, item.ts_ms)
                copy.dup = True
                retry_ms = arrival_ms + rng.randint(300, 5000)
                self._push(retry_ms, key, orjson.dumps(event), None, (copy,), False)
        if self._p_bad and rng.random() < self._p_bad:
            self._bad_record(user, now_ms, arrival_ms + rng.randint(1, 50))
        if release_held and user.held:
            latest_ms = max(item.ts_ms for _, item in pairs)
            held, user.held = user.held, []
            for event, item in held:
                item.ooo = item.ts_ms < latest_ms
                self._send(user, now_ms, [(event, item)], batch=False, release_held=False)

    def _bad_record(self, user: _User, now_ms: int, arrival_ms: int) -> None:
        rng = self._rng
        kind = rng.choice(BAD_KINDS)
        user_key = user.user_id.encode()
        key: bytes | None = user_key
        event = self._event(user, now_ms, "usage", identity=kind != "no_identity")
        event.pop("session_id", None)
        event.pop("_ts", None)
        event["source"] = rng.choice(user.project.features)
        if kind == "invalid_json":
            text = orjson.dumps(event)
            value = rng.choice(
                (
                    text[: rng.randint(5, len(text) - 2)],
                    text.replace(b'"usage"', b"'usage'"),
                    text[:-1] + b',"value":NaN}',
                    text + b"}",
                    b"\xff\xfe" + text,
                    b"user clicked checkout",
                )
            )
            key = None if rng.random() < 0.5 else user_key
        elif kind == "no_identity":
            value = orjson.dumps(event)
            key = None if rng.random() < 0.6 else user_key
        elif kind == "too_large":
            event["type"] = "log"
            event["message"] = "request body dump"
            event["data"] = {"body": "x" * (self.max_event_bytes + rng.randint(100, 40_000))}
            value = orjson.dumps(event)
        elif kind == "missing_type":
            del event["type"]
            value = orjson.dumps(event)
        else:
            event["timestamp"] = rng.choice(
                (
                    "2026-11-27T10:00:00",
                    "27/11/2026 10:00",
                    "2026-02-30T10:00:00Z",
                    "yesterday",
                    True,
                )
            )
            value = orjson.dumps(event)
        self._push(arrival_ms, key, value, kind, (), False)

    # -- accounting -----------------------------------------------------------------

    def _account(self, bad_kind: str | None, items: tuple[_Sent, ...], batch: bool) -> None:
        stats = self.stats
        stats.records += 1
        if bad_kind is not None:
            stats.bad[bad_kind] += 1
            stats.events_sent += 1
            return
        if batch:
            stats.batch_records += 1
        stats.events_sent += len(items)
        for item in items:
            session = item.session
            summary = session.summary
            if item.dup:
                stats.duplicates += 1
                summary.duplicates += 1
                continue
            if not session.emitted:
                session.emitted = True
                summary.first_ms = summary.last_ms = item.ts_ms
                stats.sessions_started += 1
                stats.sessions_manual += summary.manual
                self.sessions.append(summary)
            summary.first_ms = min(summary.first_ms, item.ts_ms)
            summary.last_ms = max(summary.last_ms, item.ts_ms)
            stats.valid_events += 1
            stats.by_type[item.type] += 1
            stats.out_of_order += item.ooo
            if item.type == "heartbeat":
                stats.heartbeats += 1
                summary.heartbeat_count += 1
            else:
                summary.event_count += 1
                summary.error_count += item.type == "error"
            if item.ends:
                summary.ended = True
                stats.sessions_ended += 1
                if item.type == "heartbeat":
                    summary.closed_by_heartbeat = True
                    stats.sessions_closed_by_heartbeat += 1
