"""Gateway-only settings: request limits, read from ``SESSIONIZER_GATEWAY_*``.

The connection, topic, listen address and API-key settings are shared with the
rest of the pipeline (:class:`pipeline.config.Settings`); these are the
gateway's own:

==========================================  =========  ==========================================
variable                                    default    meaning
==========================================  =========  ==========================================
``SESSIONIZER_GATEWAY_MAX_BODY_BYTES``      1048576    largest request body accepted (413 above)
``SESSIONIZER_GATEWAY_MAX_EVENTS_PER_BATCH``  1000     most events in one POST (413 above)
``SESSIONIZER_GATEWAY_RATE_LIMIT``          1000       events per second per API key (0 = off);
                                                       a POST costs its events, other calls one
``SESSIONIZER_GATEWAY_RATE_BURST``          2000       events a key may send at once
``SESSIONIZER_GATEWAY_AUTH_FAILURES_PER_MINUTE``  10   failed authentications per client address
                                                       and minute before it is answered 429
``SESSIONIZER_GATEWAY_TRUSTED_PROXIES``     (none)     proxies whose X-Forwarded-For names the client
``SESSIONIZER_GATEWAY_PUBLISH_TIMEOUT``     10         seconds to wait for the broker (503 after)
``SESSIONIZER_GATEWAY_ID_MEMORY``           100000     session ids / identities remembered per kind
``SESSIONIZER_GATEWAY_CORS_ALLOWED_ORIGINS``  (none)   browser origins allowed (CORS), comma-separated, or ``*``
==========================================  =========  ==========================================
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.config import read_settings
from pipeline.gateway.cors import parse_origins

MAX_BODY_BYTES = 1024 * 1024
MAX_EVENTS_PER_BATCH = 1000
RATE_LIMIT = 1000.0
RATE_BURST = 2000
AUTH_FAILURES_PER_MINUTE = 10
PUBLISH_TIMEOUT = 10.0
ID_MEMORY = 100_000


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SESSIONIZER_GATEWAY_", extra="ignore", frozen=True
    )

    max_body_bytes: int = Field(
        default=MAX_BODY_BYTES, ge=1024, description="largest request body (bytes)"
    )
    max_events_per_batch: int = Field(
        default=MAX_EVENTS_PER_BATCH, ge=1, description="most events per POST"
    )
    rate_limit: float = Field(
        default=RATE_LIMIT, ge=0,
        description="events per second per API key (an event POST costs its number of events, "
        "any other call one); 0 = off",
    )
    rate_burst: int = Field(default=RATE_BURST, ge=1, description="events an API key may send at once")
    auth_failures_per_minute: int = Field(
        default=AUTH_FAILURES_PER_MINUTE, ge=1,
        description="failed authentications a client address may make per minute (also the "
        "burst); past it every request from it is answered 429 until the budget refills",
    )
    trusted_proxies: str = Field(
        default="",
        description="comma-separated addresses or CIDR networks of proxies in front of the "
        "gateway whose X-Forwarded-For names the client for the per-client limits; empty = "
        "the TCP peer is the client",
    )

    publish_timeout: float = Field(
        default=PUBLISH_TIMEOUT, gt=0, description="seconds to wait for broker acks"
    )
    id_memory: int = Field(
        default=ID_MEMORY, ge=100, description="ids remembered for heartbeat resolution"
    )
    cors_allowed_origins: str = Field(
        default="",
        description="browser origins allowed to call the gateway (CORS), comma-separated "
        "scheme://host[:port], or * for any; empty = none (same-origin pages only)",
    )

    @field_validator("trusted_proxies", "cors_allowed_origins")
    @classmethod
    def _parses(cls, value: str, info: ValidationInfo) -> str:
        """Refuse at load time a list the gateway could not parse when it starts."""
        from pipeline.access import parse_networks  # imports aiohttp: only when validating

        (parse_networks if info.field_name == "trusted_proxies" else parse_origins)(value)
        return value

    @property
    def cors_origins(self) -> frozenset[str]:
        """The allowed origins, parsed (``*`` for any)."""
        return parse_origins(self.cors_allowed_origins)


def load_gateway_settings(**overrides: object) -> GatewaySettings:
    """Read the gateway settings; a bad value raises :class:`ConfigError` naming the variable."""
    return read_settings(GatewaySettings, "gateway settings", **overrides)
