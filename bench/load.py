"""An HTTP load generator for the gateway benchmark (aiohttp, one asyncio loop, the caller's process).

Two modes, both against one URL with one request body:

- closed loop: `concurrency` workers each send a request as soon as their last one finished, for
  `duration_s`; gives requests/s at that concurrency;
- open loop: requests are sent at a fixed offered rate whatever the server does (a request's latency is
  measured from when it was *due*, so a server that falls behind is charged for the queue it causes, not
  hidden by the client waiting: no coordinated omission); gives latency at that rate, the rate achieved
  and the errors.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp

REQUEST_TIMEOUT_S = 10.0
OPEN_LOOP_MAX_CONNECTIONS = 1024
PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class Target:
    """Where to send: the URL, the body and the headers (auth) of every request."""

    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    stream: bool = False


@dataclass(slots=True)
class LoadResult:
    mode: str  # "closed" | "open"
    duration_s: float  # the window requests were sent in
    elapsed_s: float  # from the first request sent to the last answer (or error)
    concurrency: int | None = None
    offered_rps: float | None = None
    sent: int = 0
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    achieved_rps: float = 0.0  # OK answers per second of max(duration_s, elapsed_s)
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p90, p99, mean, max of OK requests


class _Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.sent = 0
        self.last_done = 0.0

    def result(self, mode: str, duration_s: float, started: float, **extra: Any) -> LoadResult:
        elapsed = max(self.last_done - started, 1e-9)
        ok = len(self.latencies)
        return LoadResult(
            mode=mode,
            duration_s=duration_s,
            elapsed_s=elapsed,
            sent=self.sent,
            ok=ok,
            errors=sum(self.errors.values()),
            error_kinds=dict(self.errors),
            achieved_rps=ok / max(elapsed, duration_s),
            latency_ms=summarize(self.latencies),
            **extra,
        )


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summarize(latencies_s: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_s)
    if not ordered:
        return {}
    summary = {f"p{q}": 1000 * percentile(ordered, q) for q in PERCENTILES}
    summary["mean"] = 1000 * sum(ordered) / len(ordered)
    summary["max"] = 1000 * ordered[-1]
    return summary


def _complete(body: bytes, stream: bool) -> bool:
    """A whole answer: a chat completion, or a stream that reached [DONE]."""
    return body.rstrip().endswith(b"[DONE]") if stream else b'"choices"' in body


async def _one(session: aiohttp.ClientSession, target: Target, due: float, recorder: _Recorder) -> None:
    import aiohttp

    recorder.sent += 1
    try:
        async with session.post(target.url, data=target.body, headers=target.headers) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        recorder.errors[type(exc).__name__] += 1
        recorder.last_done = time.perf_counter()
        return
    done = time.perf_counter()
    recorder.last_done = done
    if status != 200:
        recorder.errors[f"http_{status}"] += 1
    elif not _complete(body, target.stream):
        recorder.errors["incomplete_body"] += 1
    else:
        recorder.latencies.append(done - due)


def open_session(max_connections: int) -> aiohttp.ClientSession:
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        skip_auto_headers=("User-Agent",),
    )


async def closed_loop(
    session: aiohttp.ClientSession, target: Target, concurrency: int, duration_s: float
) -> LoadResult:
    recorder = _Recorder()
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await _one(session, target, time.perf_counter(), recorder)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return recorder.result("closed", duration_s, started, concurrency=concurrency)


async def open_loop(
    session: aiohttp.ClientSession, target: Target, rate: float, duration_s: float
) -> LoadResult:
    """Request i is due at start + i / rate; every due request is sent at once, however many are open."""
    recorder = _Recorder()
    total = max(1, round(rate * duration_s))
    tasks: list[asyncio.Task] = []
    started = time.perf_counter()
    sent = 0
    while sent < total:
        now = time.perf_counter()
        while sent < total and started + sent / rate <= now:
            due = started + sent / rate
            tasks.append(asyncio.create_task(_one(session, target, due, recorder)))
            sent += 1
        if sent < total:
            await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    return recorder.result("open", duration_s, started, offered_rps=rate)
