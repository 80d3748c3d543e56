"""The session rules, in integer milliseconds: a config that checks itself."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SessionRules:
    """Parameters of SPEC section 3. Build from :class:`pipeline.config.Settings`."""

    inactivity_timeout_ms: int = 300_000
    max_session_duration_ms: int = 86_400_000
    reopen_grace_ms: int = 900_000
    max_future_skew_ms: int = 300_000
    max_event_age_ms: int = 259_200_000
    max_events_per_session: int = 1000
    max_event_bytes: int = 65_536

    def __post_init__(self) -> None:
        if self.inactivity_timeout_ms <= 0:
            raise ValueError("inactivity_timeout_ms must be > 0")
        if self.max_session_duration_ms <= 0:
            raise ValueError("max_session_duration_ms must be > 0")
        for name in ("reopen_grace_ms", "max_future_skew_ms", "max_events_per_session"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_event_age_ms <= 0:
            raise ValueError("max_event_age_ms must be > 0")
        if self.max_event_bytes < 64:
            raise ValueError("max_event_bytes must be >= 64")
