"""Small formatting helpers shared by the terminal commands."""

from __future__ import annotations


def format_duration(duration_ms: int) -> str:
    """``850ms``, ``42s``, ``4m 12s``, ``1h 03m``, ``2d 04h``."""
    if duration_ms < 1000:
        return f"{max(duration_ms, 0)}ms"
    seconds = duration_ms // 1000
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"
