"""Byte counts as people read them, for the messages that name a limit."""

from __future__ import annotations

_UNITS = ["KB", "MB", "GB", "TB"]


def format_bytes(count: int) -> str:
    """`1048576` → `1 MB` (binary units, as the settings' defaults are written; at most one decimal)."""
    if count < 1024:
        return f"{count} bytes"
    value = float(count)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
    raise AssertionError("unreachable")
