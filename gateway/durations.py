"""Ollama's keep_alive values: Go durations ("5m", "1h30m"), seconds as numbers, negative = forever."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: str | int | float) -> float | None:
    """Seconds to stay loaded after the last request; None means forever. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a duration such as '5m', a number of seconds, or -1")
    if isinstance(value, int | float):
        return None if value < 0 else float(value)
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return None if number < 0 else number
    negative = text.startswith("-")
    body = text.lstrip("+-")
    parts = _PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"invalid duration {value!r}: use e.g. '30s', '5m', '1h30m', 0 or -1")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    return None if negative else seconds
