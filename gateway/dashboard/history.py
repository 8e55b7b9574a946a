"""A small ring of counter readings taken whenever the dashboard is polled: rates over the last minute."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gateway.dashboard.schema import RatePoint, Rates

Key = tuple[str, str]  # (model, backend); ("", "") is the sum over all of them
TOTAL: Key = ("", "")
WINDOW_S = 60.0
MIN_SPACING_S = 1.0  # polls closer than this to the last reading (several open pages) add no reading
MIN_RATE_WINDOW_S = 0.5


@dataclass(frozen=True, slots=True)
class Counters:
    requests: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0


@dataclass(frozen=True, slots=True)
class Reading:
    at: float  # monotonic seconds
    counters: dict[Key, Counters]

    def get(self, key: Key) -> Counters:
        return self.counters.get(key, Counters())  # a series that did not exist yet was at zero


class RateHistory:
    """Owned by the app (created in its lifespan); one event loop uses it, so it needs no lock."""

    def __init__(self, window_s: float = WINDOW_S, min_spacing_s: float = MIN_SPACING_S) -> None:
        self.window_s = window_s
        self._min_spacing_s = min_spacing_s
        self._readings: deque[Reading] = deque(maxlen=int(window_s / min_spacing_s) + 2)

    def record(self, at: float, counters: dict[Key, Counters]) -> Reading:
        """Add a reading (unless the last one is too recent) and drop those older than the window."""
        reading = Reading(at, counters)
        if not self._readings or at - self._readings[-1].at >= self._min_spacing_s:
            self._readings.append(reading)
        while at - self._readings[0].at > self.window_s:
            self._readings.popleft()
        return reading

    def rates(self, now: Reading, key: Key) -> Rates:
        """Per second from the oldest reading within the window to `now`."""
        oldest = self._readings[0] if self._readings else None
        if oldest is None or now.at - oldest.at < MIN_RATE_WINDOW_S:
            return Rates()
        elapsed, start, end = now.at - oldest.at, oldest.get(key), now.get(key)
        return Rates(
            requests=(end.requests - start.requests) / elapsed,
            prompt_tokens=(end.prompt_tokens - start.prompt_tokens) / elapsed,
            generation_tokens=(end.generation_tokens - start.generation_tokens) / elapsed,
            window_s=elapsed,
        )

    def points(self, now: Reading, key: Key) -> list[RatePoint]:
        """The rate between each pair of consecutive readings in the window, oldest first."""
        points = []
        for before, after in zip(self._readings, list(self._readings)[1:], strict=False):
            elapsed, start, end = after.at - before.at, before.get(key), after.get(key)
            points.append(
                RatePoint(
                    ago_s=round(now.at - after.at, 3),
                    requests=(end.requests - start.requests) / elapsed,
                    generation_tokens=(end.generation_tokens - start.generation_tokens) / elapsed,
                )
            )
        return points
