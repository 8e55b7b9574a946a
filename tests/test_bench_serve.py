"""`tandem bench serve` end to end on the tiny model with tiny settings (2 concurrent streams of 8 tokens; one
level, as each server start costs seconds): every server answers, the report counts full, cut and failed
streams, and the JSON has its fields. No timings.
llama-server is a C++ build (`make llama-server`) that make test does not do: its test skips without it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench.serve_client import StreamRecord, summarize_level
from bench.serve_peers import default_llama_server
from gateway.cli import main

TOKENS = 8


def _record(status: int | None, tokens: int, done: bool, error: str | None = None) -> StreamRecord:
    record = StreamRecord(started=0.0, status=status, done=done, error=error)
    record.chunk_times = [0.1 * (i + 1) for i in range(tokens)]
    return record


def test_a_stream_is_full_cut_or_failed() -> None:
    records = [
        _record(200, TOKENS, done=True),
        _record(200, TOKENS - 1, done=True),  # fewer tokens than asked: cut
        _record(200, 3, done=False, error="ClientPayloadError"),  # broke mid-stream: cut
        _record(503, 0, done=False, error="http_503"),  # refused: failed
        _record(None, 0, done=False, error="ClientConnectorError"),  # never connected: failed
    ]
    level = summarize_level(5, records, TOKENS)
    assert (level.ok, level.cut, level.failed) == (1, 2, 2)
    assert level.error_kinds == {"cut": 1, "ClientPayloadError": 1, "http_503": 1, "ClientConnectorError": 1}
    assert level.output_tokens == TOKENS + TOKENS - 1 + 3
    # only the full stream's gaps and first token count
    assert level.ttft_ms["p50"] == pytest.approx(100.0)
    assert level.itl_ms["p99"] == pytest.approx(100.0)


def test_usage_counts_tokens_when_the_server_reports_it() -> None:
    record = _record(200, 4, done=True)
    record.completion_tokens = TOKENS  # e.g. a server that put two tokens in some chunks
    assert summarize_level(1, [record], TOKENS).ok == 1


def _run(tiny_llama, tmp_path: Path, peers: list[str]) -> dict:
    out = tmp_path / "serve.json"
    argv = ["bench", "serve", "--models", str(tiny_llama.gguf_path), "--concurrency", "2", "--rounds", "1",
            "--max-tokens", str(TOKENS), "--warmup-tokens", "2", "--raw-repeats", "1", "--peers", *peers,
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    return json.loads(out.read_text())


def _levels(report: dict, peer: str) -> list[dict]:
    (result,) = report["results"]
    (found,) = [p for p in result["peers"] if p["peer"] == peer]
    return found["levels"]


def test_tandem_and_llama_cpp_python_servers(tiny_llama, tmp_path: Path) -> None:
    if importlib.util.find_spec("sse_starlette") is None:
        pytest.skip("llama_cpp.server needs tandem's bench extra: pip install -e '.[bench]'")
    report = _run(tiny_llama, tmp_path, ["llama-cpp-python", "tandem-dev", "llama-cpp-python-server"])
    (result,) = report["results"]
    assert result["raw"]["decode_tok_s"] > 0 and result["raw"]["prompt_len"] == 48
    (level,) = _levels(report, "tandem-dev")  # the gateway queues or batches, it never cuts a stream
    assert (level["concurrency"], level["ok"], level["cut"], level["failed"]) == (2, 2, 0, 0)
    assert level["output_tokens"] == 2 * TOKENS
    assert level["ttft_ms"]["p99"] >= level["ttft_ms"]["p50"] > 0
    assert level["itl_ms"]["p50"] >= 0 and level["prompt_tokens"] > 0
    # serial, and a new stream interrupts the running one (interrupt_requests): the last one started is whole
    (peer,) = _levels(report, "llama-cpp-python-server")
    assert peer["ok"] >= 1 and peer["ok"] + peer["cut"] + peer["failed"] == 2
    # no 8-stream level in this run: the goals that need one say so instead of passing
    verdicts = {g["goal"]: g for g in report["goals"][str(tiny_llama.gguf_path)]}
    assert verdicts["streams cut or failed at 8"] == {
        "goal": "streams cut or failed at 8",
        "value": None,
        "target": "0",
        "met": None,
    }


def test_llama_server(tiny_llama, tmp_path: Path) -> None:
    binary = default_llama_server()
    if not binary.is_file():
        pytest.skip(f"llama-server is not built ({binary}): `make llama-server` compiles it once")
    report = _run(tiny_llama, tmp_path, ["llama-server"])
    (level,) = _levels(report, "llama-server")  # -np 2: both streams in their own slot
    assert (level["ok"], level["cut"], level["failed"], level["output_tokens"]) == (2, 0, 0, 2 * TOKENS)
