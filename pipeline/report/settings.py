"""Report settings, read from ``SESSIONIZER_REPORT_*``.

Where the sessions are (Redis URL, key prefix) and how long a session can last
come from the pipeline's own settings (:class:`pipeline.config.Settings`);
these are the report's:

====================================  =========  =============================================
variable                              default    meaning
====================================  =========  =============================================
``SESSIONIZER_REPORT_ENABLED``        true       serve the report from the gateway
``SESSIONIZER_REPORT_TOKEN``          (none)     the operator token: ``Authorization: Bearer
                                                 <token>`` sees every project (API keys see
                                                 their own); 16+ random characters
``SESSIONIZER_REPORT_MAX_OPEN``       2000       open sessions read per request
``SESSIONIZER_REPORT_SCAN_LIMIT``     2000       closed sessions read per request (at most)
``SESSIONIZER_REPORT_RATE_LIMIT``     5          API requests per second per client address
``SESSIONIZER_REPORT_RATE_BURST``     20         API requests a client address may make at once
====================================  =========  =============================================
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.config import read_settings


class ReportSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SESSIONIZER_REPORT_", extra="ignore", frozen=True)

    enabled: bool = Field(True, description="serve the Sessions report from the gateway")
    token: SecretStr = Field(
        SecretStr(""),
        description="operator token (Authorization: Bearer) that opens every project's sessions; "
        "API keys open their own project's; empty = none",
    )
    max_open: int = Field(2_000, ge=1, description="open sessions read from Redis per request")
    scan_limit: int = Field(2_000, ge=100, description="closed sessions read per request, at most")
    rate_limit: float = Field(5.0, ge=0, description="API requests per second per client address; 0 = off")
    rate_burst: int = Field(20, ge=1, description="API requests a client address may make at once")


def load_report_settings(**overrides: object) -> ReportSettings:
    """Read the report settings; a bad value raises :class:`ConfigError` naming the variable."""
    return read_settings(ReportSettings, "report settings", **overrides)
