"""Ollama's keep_alive values: Go durations ("5m", "1h30m"), seconds as numbers, negative = forever.

Every value becomes None (forever) or a finite number of seconds in [0, FOREVER_S): a deadline computed
from it, and the expiry date /api/ps shows, stay representable. NaN and infinities are refused (a NaN
deadline compares false with every time, so the model would never unload); a finite duration of a
century or more is what a client means by "keep it loaded", so it is kept forever, as -1 is.
"""

from __future__ import annotations

import math
import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
FOREVER_S = 100 * 365 * 24 * 3600.0  # durations at least this long mean forever
_USAGE = "use e.g. '30s', '5m', '1h30m', 0 or -1 (forever)"


def _bounded(seconds: float, value: object) -> float | None:
    if not math.isfinite(seconds):
        raise ValueError(f"invalid keep_alive {value!r}: not a finite duration; {_USAGE}")
    return None if seconds < 0 or seconds >= FOREVER_S else seconds


def parse_keep_alive(value: str | int | float) -> float | None:
    """Seconds to stay loaded after the last request; None means forever. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a duration such as '5m', a number of seconds, or -1")
    if isinstance(value, int):
        return None if value < 0 or value >= FOREVER_S else float(value)  # float(10**400) would overflow
    if isinstance(value, float):
        return _bounded(value, value)
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return _bounded(number, value)
    negative = text.startswith("-")
    body = text.lstrip("+-")
    parts = _PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"invalid duration {value!r}: {_USAGE}")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    return _bounded(-1.0 if negative else seconds, value)
