"""Settings, read from ``SESSIONIZER_*`` environment variables (pydantic-settings).

SPEC section 7 names the contract's variables; every other setting here has an
environment variable too: the field name upper-cased with the prefix, e.g.
``max_events_per_session`` is ``SESSIONIZER_MAX_EVENTS_PER_SESSION``.
Durations are seconds (float) in the environment, as the SPEC says; the code
reads them as integer milliseconds through the ``*_ms`` properties.
"""

from __future__ import annotations

from functools import cached_property
from typing import TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.core.rules import SessionRules
from pipeline.exceptions import ConfigError

_S = TypeVar("_S", bound=BaseSettings)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SESSIONIZER_", extra="ignore", frozen=True)

    # -- connections -------------------------------------------------------
    kafka_bootstrap: str = Field("localhost:9092", description="Kafka bootstrap servers, comma-separated")
    redis_url: str = Field("redis://localhost:6379/0", description="Redis URL (redis:// or rediss://)")

    # -- topics ------------------------------------------------------------
    events_topic: str = Field("events", description="input topic")
    sessions_topic: str = Field("sessions", description="closed sessions (sink)")
    dlq_topic: str = Field("events-dlq", description="rejected input")
    updates_topic: str = Field("session-updates", description="live view of open sessions")
    repartition_topic: str = Field(
        "sessionizer-repartition",
        description="internal: events whose record key does not route them to their session's partition",
    )
    topic_partitions: int = Field(8, ge=1, description="partitions when the worker creates a topic")
    topic_replication: int = Field(1, ge=1, description="replication factor when the worker creates a topic")
    events_retention_ms: int = Field(
        7 * 86_400_000, ge=-1,
        description="retention.ms the worker gives the events and repartition topics when it creates "
        "them (7 days; -1 = keep forever); an existing topic keeps its own",
    )
    sessions_retention_ms: int = Field(
        30 * 86_400_000, ge=-1,
        description="retention.ms the worker gives the sessions topic when it creates it (30 days; "
        "-1 = keep forever); an existing topic keeps its own",
    )
    dlq_retention_ms: int = Field(
        14 * 86_400_000, ge=-1,
        description="retention.ms the worker gives the dead-letter topic when it creates it (14 days; "
        "-1 = keep forever); an existing topic keeps its own",
    )
    updates_retention_ms: int = Field(
        86_400_000, ge=-1,
        description="retention.ms the worker gives the updates topic when it creates it (1 day; "
        "-1 = keep forever); an existing topic keeps its own",
    )

    # -- session rules (seconds) -------------------------------------------
    inactivity_timeout: float = Field(
        300.0, gt=0,
        description="idle time (s) that closes a session: its latest arrival plus this, on the stream clock",
    )
    max_session_duration: float = Field(
        86400.0, gt=0,
        description="longest session (s); an event that would stretch a session past it opens a new one",
    )
    reopen_grace: float = Field(
        900.0, ge=0,
        description="how long (s, stream clock) a closed session can still be amended or reopened by a late event",
    )
    max_future_skew: float = Field(
        300.0, ge=0,
        description="event time further ahead of arrival (and a record time further ahead of the worker's "
        "clock) than this (s) is clamped and counted",
    )
    max_event_age: float = Field(
        259200.0, gt=0, description="event time further behind arrival than this (s) is rejected (too_old)"
    )
    max_events_per_session: int = Field(
        1000, ge=0, description="events listed in a session record (events_truncated past it)"
    )
    max_event_bytes: int = Field(
        65536, ge=64, description="size limit of one event (bytes); a larger one is dead-lettered (too_large)"
    )
    max_record_bytes: int = Field(
        1_000_000, ge=4096,
        description="largest session record or dead letter the worker sends (encoded bytes); a "
        "longer session record loses events from its list, then its largest data values, and says "
        '"truncated": true (SPEC section 4). Keep it under the broker\'s message.max.bytes',
    )
    record_max_attempts: int = Field(
        3, ge=1,
        description="times the worker tries a record whose processing raises an unexpected error "
        "(not the broker or Redis being unreachable, which is retried without end) before it "
        "dead-letters it as processing_failed and goes on with the partition",
    )

    project_settings: str = Field(
        "",
        description="per-project overrides of inactivity_timeout, max_session_duration and "
        "reopen_grace (seconds): inline JSON or the path of a JSON or TOML file, e.g. "
        '{"shop": {"inactivity_timeout": 900}}',
    )

    updates_interval: float = Field(
        0.0, ge=0,
        description="publish open sessions' changes to the updates topic, at most one per session "
        "per this many seconds; 0 = off",
    )

    # -- worker --------------------------------------------------------------
    consumer_group: str = Field("sessionizer", description="Kafka consumer group of the workers")
    web_host: str = Field(
        "127.0.0.1",
        description="worker admin bind address (/metrics, /stats, /healthz, /readyz); loopback "
        "unless a scraper elsewhere must reach it",
    )
    web_port: int = Field(0, ge=0, le=65535, description="worker admin port; 0 = any free port")
    liveness_stall: float = Field(
        120.0, gt=0,
        description="the worker's /healthz fails when a partition with input waiting has "
        "applied nothing for this many seconds",
    )
    kafka_session_timeout: float = Field(10.0, gt=0, description="consumer group session timeout (s)")
    state_cache_keys: int = Field(
        100_000, ge=1_000,
        description="session keys a worker keeps in memory between batches, all its partitions "
        "together (least recently used go back to Redis): bounds the worker's memory. A partition "
        "whose key states fill at most half of its share is loaded whole when claimed",
    )
    heap_trim_mib: int = Field(
        64, ge=0,
        description="free C-heap memory (MiB) above which the worker hands free pages back "
        "to the system (glibc malloc_trim, checked every 10 s); 0 = never",
    )
    batch_max_records: int = Field(10000, ge=1, description="records taken per fetch, over all partitions")
    fetch_partition_bytes: int = Field(
        4 << 20, ge=1024,
        description="bytes a fetch request asks per partition (Kafka's max.partition.fetch.bytes; "
        "a larger first record batch still comes whole)",
    )
    tick_interval: float = Field(0.25, gt=0, description="how often idle sessions are checked (s)")
    kafka_idempotence: str = Field(
        "auto", pattern="^(auto|on|off)$",
        description="idempotent sink producer: auto (use it where the broker supports it), on, off",
    )
    history_retention: float = Field(86400.0, ge=0, description="how long closed sessions stay listable (s)")
    history_max_sessions: int = Field(50_000, ge=0, description="closed sessions kept per partition")
    revision_retention: float = Field(
        30 * 86400.0, gt=0,
        description="how long the highest revision of a client-chosen session id is remembered "
                    "after its last change (s): a new session with the id within that time goes "
                    "on above it (one Redis hash field per id)",
    )
    redis_key_prefix: str = Field("sz", min_length=1, description="prefix of every Redis key")
    redis_cluster: str = Field(
        "auto", pattern="^(?i)(auto|true|false)$",
        description="Redis Cluster: true (a cluster client, the URL naming any node), false "
        "(one server), or auto (asks the server with INFO cluster at start)",
    )
    log_level: str = Field("info", description="log level: debug, info, warning or error")
    log_format: str = Field(
        "text", pattern="^(?i)(text|json)$",
        description="text, or json: one JSON object per line (ts, level, logger, message, extra)",
    )
    metrics_interval: float = Field(
        5.0, gt=0, description="how often the worker refreshes its gauges (open sessions, lag) (s)"
    )

    # -- secure connections (see pipeline/security.py) -------------------------
    kafka_security_protocol: str = Field(
        "PLAINTEXT", pattern="^(?i)(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$",
        description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    kafka_sasl_mechanism: str = Field(
        "PLAIN", pattern="^(?i)(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$",
        description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* protocols)",
    )
    kafka_sasl_username: str = Field("", description="SASL user name")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password")
    kafka_ssl_cafile: str = Field("", description="CA bundle (PEM) to verify the brokers; empty = system CAs")
    kafka_ssl_certfile: str = Field("", description="client certificate (PEM), for mutual TLS")
    kafka_ssl_keyfile: str = Field("", description="client private key (PEM), for mutual TLS")
    redis_password: SecretStr = Field(
        SecretStr(""), description="Redis AUTH password, when SESSIONIZER_REDIS_URL carries none"
    )
    redis_ssl_ca_certs: str = Field("", description="CA bundle (PEM) to verify Redis (rediss://)")
    redis_ssl_certfile: str = Field("", description="client certificate (PEM) for Redis (rediss://)")
    redis_ssl_keyfile: str = Field("", description="client private key (PEM) for Redis (rediss://)")
    redis_ssl_cert_reqs: str = Field(
        "required", pattern="^(?i)(required|optional|none)$",
        description="verify the Redis server certificate: required, optional or none",
    )
    redis_ssl_check_hostname: bool = Field(
        True,
        description="check that the Redis server certificate names the host in "
        "SESSIONIZER_REDIS_URL (rediss://); off only with SESSIONIZER_REDIS_SSL_CERT_REQS=none",
    )
    redis_socket_timeout: float = Field(
        10.0, gt=0,
        description="seconds a Redis command waits for its reply (a half-open connection fails "
        "instead of hanging), and for a free pooled connection",
    )
    redis_connect_timeout: float = Field(5.0, gt=0, description="seconds to open a Redis connection")
    redis_max_connections: int = Field(
        64, ge=2,
        description="most connections each process keeps to Redis (a bounded pool; a command "
        "that finds them all busy waits up to the socket timeout)",
    )
    redis_allow_eviction: bool = Field(
        False,
        description="let the worker start against a Redis whose maxmemory-policy evicts keys "
        "(an evicting Redis silently drops live sessions); keep false and use noeviction",
    )

    # -- gateway -------------------------------------------------------------
    gateway_host: str = Field("0.0.0.0", description="gateway public bind address (ingestion, report)")
    gateway_port: int = Field(8080, ge=0, le=65535, description="gateway public port")
    gateway_admin_host: str = Field(
        "127.0.0.1",
        description="gateway admin bind address (/metrics, /healthz, /readyz); loopback unless "
        "a scraper elsewhere must reach it",
    )
    gateway_admin_port: int = Field(
        8081, ge=0, le=65535, description="gateway admin port (/metrics, /healthz, /readyz); 0 = any free port"
    )
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="the gateway's API keys, comma-separated key:project pairs; each key at "
        "least 16 random characters (placeholders such as change-me or demo are refused)",
    )

    api_keys_file: str = Field(
        "",
        description="a file holding the API keys in the format of SESSIONIZER_API_KEYS (a mounted "
        "secret), read when SESSIONIZER_API_KEYS is empty",
    )

    @field_validator("redis_cluster")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @field_validator("kafka_bootstrap", "redis_url")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @cached_property
    def rules(self) -> SessionRules:
        """The session rules in integer milliseconds, for the pure core."""
        return SessionRules(
            inactivity_timeout_ms=_ms(self.inactivity_timeout),
            max_session_duration_ms=_ms(self.max_session_duration),
            reopen_grace_ms=_ms(self.reopen_grace),
            max_future_skew_ms=_ms(self.max_future_skew),
            max_event_age_ms=_ms(self.max_event_age),
            max_events_per_session=self.max_events_per_session,
            max_event_bytes=self.max_event_bytes,
        )

    @cached_property
    def project_rules(self) -> dict[str, SessionRules]:
        """``SESSIONIZER_PROJECT_SETTINGS`` as rules per project (defaults elsewhere)."""
        return parse_project_settings(self.project_settings, self.rules)

    @property
    def api_key_map(self) -> dict[str, str]:
        """``SESSIONIZER_API_KEYS`` parsed into ``{key: project}``; a malformed pair or a
        weak key (:func:`pipeline.credentials.weakness`) raises :class:`ConfigError`."""
        from pipeline.credentials import check_secret

        text = self.api_keys.get_secret_value()
        if not text.strip() and self.api_keys_file.strip():
            try:
                with open(self.api_keys_file.strip()) as source:
                    text = ",".join(line.strip() for line in source if line.strip())
            except OSError as exc:
                raise ConfigError(
                    f"SESSIONIZER_API_KEYS_FILE: cannot read it ({exc.strerror}); give the path "
                    "of a file of key:project pairs"
                ) from None
        pairs: dict[str, str] = {}
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, project = item.partition(":")
            if not sep or not key or not project:
                raise ConfigError(
                    f"SESSIONIZER_API_KEYS: item {len(pairs) + 1} is not a key:project pair; "
                    "write e.g. SESSIONIZER_API_KEYS=<key>:shop,<key2>:blog"
                )
            check_secret("SESSIONIZER_API_KEYS", key, f"the key of project {project!r}")
            pairs[key] = project
        return pairs


_OVERRIDABLE = {
    "inactivity_timeout": "inactivity_timeout_ms",
    "max_session_duration": "max_session_duration_ms",
    "reopen_grace": "reopen_grace_ms",
}


def parse_project_settings(text: str, defaults: SessionRules) -> dict[str, SessionRules]:
    """Per-project rules from inline JSON or a JSON/TOML file; errors name the problem."""
    import tomllib
    from dataclasses import replace
    from pathlib import Path

    import orjson

    text = text.strip()
    if not text:
        return {}
    where = "SESSIONIZER_PROJECT_SETTINGS"
    try:
        if text.startswith("{"):
            raw = orjson.loads(text)
        else:
            path = Path(text)
            where = f"{where} ({path})"
            content = path.read_bytes()
            raw = tomllib.loads(content.decode()) if path.suffix == ".toml" else orjson.loads(content)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot read it ({exc}); give inline JSON or a JSON/TOML file path") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object of project -> settings")
    rules: dict[str, SessionRules] = {}
    for project, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: project {project!r}: expected an object of settings")
        changes: dict[str, int] = {}
        for name, value in values.items():
            if name not in _OVERRIDABLE:
                raise ConfigError(
                    f"{where}: project {project!r}: unknown setting {name!r}; "
                    f"overridable are {', '.join(sorted(_OVERRIDABLE))}"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{where}: project {project!r}: {name} must be a number of seconds >= 0")
            changes[_OVERRIDABLE[name]] = _ms(value)
        try:
            rules[project] = replace(defaults, **changes)
        except ValueError as exc:
            raise ConfigError(f"{where}: project {project!r}: {exc}") from None
    return rules


def read_settings(cls: type[_S], name: str, **overrides: object) -> _S:
    """Build a settings class from the environment; a bad value raises :class:`ConfigError`
    naming each variable (``cls.model_config["env_prefix"]`` + field) and what is wrong."""
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        problems = "; ".join(
            f"{prefix}{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid {name}: {problems}") from None


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a bad value raises :class:`ConfigError` naming the variable."""
    return read_settings(Settings, "settings", **overrides)
