"""The streaming clients of `tandem bench serve`: N concurrent chat streams against one OpenAI-compatible
server, each stream timed chunk by chunk (aiohttp, one asyncio loop, the caller's process).

A stream's time to first token (TTFT) runs from sending the request to the first chunk that carries text;
its inter-token latencies (ITL) are the gaps between consecutive text chunks after that. Its output tokens
are the server's `usage.completion_tokens` when it reports usage, else the text chunks it sent (every
server here sends one token per chunk). A stream is *cut* when it answered 200 but ended before `[DONE]`
or with fewer tokens than asked for, *failed* when it got no 200 or the connection broke.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.load import percentile

if TYPE_CHECKING:
    import aiohttp

STREAM_TIMEOUT_S = 900.0  # a whole stream, queueing included (16 serial streams on 2 cores take minutes)
READ_TIMEOUT_S = 300.0  # between two chunks: a server that stops sending is a failed stream, not a hang

TOPICS = (
    "the history of the printing press", "how bees find flowers", "why the sky is blue", "the rules of chess",
    "how a steam engine works", "the life of a lighthouse keeper", "making bread at home", "Jupiter's moons",
    "how rivers shape valleys", "a day at a busy train station", "the first flight across the Atlantic",
    "why cats purr", "how glass is made", "the water cycle", "a walk through an old forest",
    "the invention of the telephone", "how compasses work", "life on a coral reef",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChatLoad:
    """What every stream asks for; `extra` is the server-specific way to get exactly max_tokens tokens."""

    url: str  # .../v1/chat/completions
    model: str
    max_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)


def chat_body(load: ChatLoad, index: int) -> bytes:
    """A different question per request (no two streams share more than the template's prefix)."""
    topic = TOPICS[index % len(TOPICS)]
    question = f"Request {index}: write a long, detailed essay about {topic}, with examples."
    body = {
        "model": load.model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": load.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **load.extra,
    }
    return json.dumps(body).encode()


@dataclass(slots=True)
class StreamRecord:
    started: float  # perf_counter when sent
    chunk_times: list[float] = field(default_factory=list)  # perf_counter of each text chunk
    completion_tokens: int | None = None  # the server's usage figure, when it sends one
    prompt_tokens: int | None = None
    done: bool = False  # reached data: [DONE]
    status: int | None = None
    error: str | None = None  # exception name, or http_<status>

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else len(self.chunk_times)

    @property
    def ended(self) -> float:
        return self.chunk_times[-1] if self.chunk_times else self.started


def _read_event(record: StreamRecord, payload: bytes, now: float) -> None:
    if payload == b"[DONE]":
        record.done = True
        return
    event = json.loads(payload)
    usage = event.get("usage")
    if usage:
        record.completion_tokens = usage.get("completion_tokens")
        record.prompt_tokens = usage.get("prompt_tokens")
    for choice in event.get("choices") or []:
        if (choice.get("delta") or {}).get("content"):
            record.chunk_times.append(now)


async def one_stream(session: aiohttp.ClientSession, load: ChatLoad, index: int) -> StreamRecord:
    import aiohttp

    record = StreamRecord(time.perf_counter())
    headers = {"content-type": "application/json"}
    try:
        async with session.post(load.url, data=chat_body(load, index), headers=headers) as response:
            record.status = response.status
            if response.status != 200:
                record.error = f"http_{response.status}"
                await response.read()
                return record
            async for line in response.content:
                if line.startswith(b"data:"):
                    _read_event(record, line[5:].strip(), time.perf_counter())
    except (aiohttp.ClientError, TimeoutError, OSError, json.JSONDecodeError) as exc:
        record.error = type(exc).__name__
    return record


def open_stream_session(connections: int) -> aiohttp.ClientSession:
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=STREAM_TIMEOUT_S, sock_read=READ_TIMEOUT_S),
        skip_auto_headers=("User-Agent",),
    )


@dataclass(slots=True)
class LevelResult:
    """One concurrency level on one server: `rounds` streams per client, each client's one after another."""

    concurrency: int
    streams: int
    ok: int  # full streams: [DONE] and max_tokens tokens
    cut: int
    failed: int
    error_kinds: dict[str, int]
    output_tokens: int  # of all streams, cut ones included
    elapsed_s: float  # first request sent to the last stream's end
    aggregate_tok_s: float  # output_tokens / elapsed_s
    stream_decode_tok_s: float  # median over full streams of (tokens - 1) / (last chunk - first chunk)
    ttft_ms: dict[str, float]  # p50, p99 over full streams
    itl_ms: dict[str, float]  # p50, p99 over every gap of every full stream
    prompt_tokens: int | None  # one request's, as the server counted it (when it reports usage)


def _p50_p99(values_s: list[float]) -> dict[str, float]:
    ordered = sorted(values_s)
    if not ordered:
        return {}
    return {"p50": 1000 * percentile(ordered, 50), "p99": 1000 * percentile(ordered, 99)}


def summarize_level(concurrency: int, records: list[StreamRecord], max_tokens: int) -> LevelResult:
    full = [r for r in records if r.error is None and r.done and r.tokens >= max_tokens]
    failed = [r for r in records if r.error is not None and r.status != 200]
    cut = len(records) - len(full) - len(failed)
    whole = {id(r) for r in full}
    kinds = Counter(r.error or "cut" for r in records if id(r) not in whole)
    started = min(r.started for r in records)
    elapsed = max(max(r.ended for r in records) - started, 1e-9)
    tokens = sum(r.tokens for r in records)
    decode = [(r.tokens - 1) / (r.chunk_times[-1] - r.chunk_times[0]) for r in full if len(r.chunk_times) > 1]
    gaps = [b - a for r in full for a, b in zip(r.chunk_times, r.chunk_times[1:], strict=False)]
    return LevelResult(
        concurrency=concurrency,
        streams=len(records),
        ok=len(full),
        cut=cut,
        failed=len(failed),
        error_kinds=dict(kinds),
        output_tokens=tokens,
        elapsed_s=elapsed,
        aggregate_tok_s=tokens / elapsed,
        stream_decode_tok_s=statistics.median(decode) if decode else 0.0,
        ttft_ms=_p50_p99([r.chunk_times[0] - r.started for r in full if r.chunk_times]),
        itl_ms=_p50_p99(gaps),
        prompt_tokens=next((r.prompt_tokens for r in records if r.prompt_tokens is not None), None),
    )


async def run_level(
    load: ChatLoad, concurrency: int, rounds: int, first_index: int = 0
) -> list[StreamRecord]:
    """`concurrency` clients, each sending `rounds` streams back to back (closed loop)."""
    async with open_stream_session(concurrency) as session:

        async def client(c: int) -> list[StreamRecord]:
            return [await one_stream(session, load, first_index + c * rounds + r) for r in range(rounds)]

        per_client = await asyncio.gather(*(client(c) for c in range(concurrency)))
    return [record for records in per_client for record in records]


def measure_level(load: ChatLoad, concurrency: int, rounds: int, first_index: int = 0) -> LevelResult:
    records = asyncio.run(run_level(load, concurrency, rounds, first_index))
    return summarize_level(concurrency, records, load.max_tokens)
