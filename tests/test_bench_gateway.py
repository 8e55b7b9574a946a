"""`tandem bench gateway` machinery end to end for ~2 s against the stub and tandem (LiteLLM's proxy skipped):
the stub answers like an upstream, the load generator counts, and the JSON has its fields. No timings."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.gateway_overhead import main
from bench.load import Target, closed_loop, open_loop, open_session, percentile


def test_percentile_is_nearest_rank() -> None:
    ordered = [float(i) for i in range(1, 101)]
    assert percentile(ordered, 50) == 50.0
    assert percentile(ordered, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


@pytest.fixture
def stub_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "bench.stub_upstream", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_stub_answers_like_an_openai_upstream(stub_url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{stub_url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["stub"]
    reply = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello from the stub."
    assert reply.model == "any" and reply.usage is not None and reply.usage.completion_tokens == 5
    chunks = list(
        client.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the stub."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 13


def test_load_generator_counts_answers_and_errors(stub_url: str) -> None:
    body = json.dumps({"model": "stub", "messages": [{"role": "user", "content": "hi"}]}).encode()
    good = Target("direct", f"{stub_url}/v1/chat/completions", body, {"content-type": "application/json"})
    missing = Target("missing", f"{stub_url}/v1/nothing", body, {"content-type": "application/json"})

    async def run():
        async with open_session(64) as session:
            closed = await closed_loop(session, good, 4, 0.3)
            opened = await open_loop(session, good, 50, 0.4)
            failed = await open_loop(session, missing, 20, 0.2)
            return closed, opened, failed

    closed, opened, failed = asyncio.run(run())
    assert closed.ok > 0 and closed.errors == 0 and closed.ok == closed.sent
    assert set(closed.latency_ms) == {"p50", "p90", "p99", "mean", "max"}
    assert opened.sent == 20 and opened.ok == 20 and opened.offered_rps == 50
    assert failed.ok == 0 and failed.errors == failed.sent == 4 and failed.error_kinds == {"http_404": 4}


def test_bench_gateway_writes_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gateway.json"
    argv = ["--no-litellm", "--no-pin", "--warmup", "0.2", "--duration", "1", "--concurrency", "4"]
    argv += ["--rates", "20", "--goal-rate", "20", "--open-duration", "0.5", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "closed loop" in printed and "open loop" in printed and "tandem" in printed

    report = json.loads(out.read_text())
    environment = report["environment"]
    assert environment["command"].startswith("tandem bench gateway --no-litellm")
    for name in ("date", "python", "cpu", "cores", "memory", "load_average_before", "load_average_after"):
        assert environment[name]
    assert "torch" not in environment  # this benchmark never imports it
    assert report["settings"]["rates"] == [20.0] and report["settings"]["stream"] is False
    assert set(report["results"]) == {"direct", "tandem"}
    for name, result in report["results"].items():
        closed = result["closed"]
        assert closed["mode"] == "closed" and closed["ok"] > 0 and closed["errors"] == 0, name
        assert closed["achieved_rps"] > 0 and closed["latency_ms"]["p99"] > 0
        assert result["server_cpu_ms_per_request"] is not None
        [opened] = result["open"]
        assert opened["offered_rps"] == 20 and opened["sent"] == 10 and opened["ok"] + opened["errors"] == 10
    assert set(report["added_latency_ms"]["tandem"]["20"]) == {"p50", "p99"}
    assert report["proxies"]["tandem"]["env"]["TANDEM_MASTER_KEY"] == "(set)"
    assert "tandem_added_p99_ms" in report["goals"] and "rps_ratio_vs_litellm" not in report["goals"]
