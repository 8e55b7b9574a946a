"""What a backend reports about itself, read by the gateway's /metrics at scrape time.

Plain data, no prometheus-client here: backends (and the engine) stay free of the HTTP stack.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass

# Bucket bounds shared by gateway and engine so panels can compare them.
LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # per bucket (not cumulative); one more than bounds, the last is +Inf
    total: float
    count: int


class Histogram:
    """A fixed-bucket histogram that one thread observes into and another snapshots."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._total = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._total += value
            self._count += 1

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            return HistogramSnapshot(self._bounds, tuple(self._counts), self._total, self._count)


@dataclass(frozen=True, slots=True)
class EngineStats:
    """The paged engine's counters, with the meaning of vLLM's metrics of the same names."""

    requests_running: int
    requests_waiting: int
    kv_cache_usage: float  # 0..1, fraction of KV blocks in use
    prefix_cache_queries: int  # tokens looked up in the prefix cache
    prefix_cache_hits: int  # tokens found there
    preemptions: int
    step_batch_size: HistogramSnapshot
    step_tokens: HistogramSnapshot
    request_queue_time_s: HistogramSnapshot
    request_prefill_time_s: HistogramSnapshot
    request_decode_time_s: HistogramSnapshot
    prompt_tokens_computed: int | None = None  # prompt tokens run through the model (hits skip them)


@dataclass(frozen=True, slots=True)
class BackendStats:
    running: int  # requests generating now
    waiting: int  # admitted requests not yet generating
    load_seconds: float | None = None
    engine: EngineStats | None = None
