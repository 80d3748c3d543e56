"""Moved to :mod:`sessionizer_client.errors`; kept importable here."""

from sessionizer_client.errors import MAX_FRAMES, MAX_INNER_DEPTH, error_info, type_name

__all__ = ["MAX_FRAMES", "MAX_INNER_DEPTH", "error_info", "type_name"]
