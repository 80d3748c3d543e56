"""Report settings, read from ``SESSIONIZER_REPORT_*``.

Where the sessions are (Redis URL, key prefix) and how long a session can last
come from the pipeline's own settings (:class:`pipeline.config.Settings`);
these are the report's:

====================================  =========  =============================================
variable                              default    meaning
====================================  =========  =============================================
``SESSIONIZER_REPORT_ENABLED``        true       serve the report from the gateway
``SESSIONIZER_REPORT_TOKEN``          (none)     when set, the JSON API needs
                                                 ``Authorization: Bearer <token>``
``SESSIONIZER_REPORT_MAX_OPEN``       10000      open sessions read per request
``SESSIONIZER_REPORT_SCAN_LIMIT``     5000       closed sessions read per request (at most)
====================================  =========  =============================================
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.config import read_settings


class ReportSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SESSIONIZER_REPORT_", extra="ignore", frozen=True)

    enabled: bool = Field(True, description="serve the Sessions report from the gateway")
    token: str = Field("", description="bearer token the JSON API requires; empty = none")
    max_open: int = Field(10_000, ge=1, description="open sessions read per request")
    scan_limit: int = Field(5_000, ge=100, description="closed sessions read per request, at most")


def load_report_settings(**overrides: object) -> ReportSettings:
    """Read the report settings; a bad value raises :class:`ConfigError` naming the variable."""
    return read_settings(ReportSettings, "report settings", **overrides)
