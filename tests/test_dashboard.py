"""GET /dashboard and /dashboard.json against a real server on both profiles, after a scripted mix of traffic:
exact request counts per status class, token totals equal to the usage the clients got, quantiles inside
the histogram bucket /metrics puts them in, the engine panel on both; the page rendered by a headless
Chromium (Debian package `chromium`, installed by `make install`; without it the test fails, naming it)."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.dashboard.history import Counters, RateHistory, Reading
from gateway.dashboard.quantiles import histogram_quantile
from tests.conftest import SERVED_PROFILES, RunningServer, model_entry, start_server
from tests.deploy_support import require_tool

CHAT = [{"role": "user", "content": "count the blocks " * 16}]
MASTER_KEY = "sk-dashboard-test-master"
WINDOW = (1400, 1000)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)  # fmt: skip


# ---- the estimators, without a server ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(1.0, 0), (2.0, 10), (math.inf, 10)], 1.5),  # interpolated inside (1, 2]
        (0.5, [(1.0, 4), (math.inf, 4)], 0.5),  # the first bucket starts at 0
        (0.99, [(1.0, 1), (2.0, 1), (math.inf, 5)], 2.0),  # in +Inf: the highest finite bound
        (0.95, [(0.1, 19), (0.5, 20), (math.inf, 20)], 0.1),  # rank 19 closes the first bucket
        (0.5, [(1.0, 0), (math.inf, 0)], None),  # no observations
        (0.5, [(-1.0, 3), (math.inf, 3)], -1.0),  # a non-positive first bound is returned as is
    ],
)
def test_histogram_quantile_like_prometheus(q, buckets, expected):
    assert histogram_quantile(q, buckets) == expected


def test_rates_over_the_readings_of_the_last_minute():
    history, key = RateHistory(window_s=60, min_spacing_s=1), ("tiny", "paged")

    def reading(at: float, requests: float) -> Reading:
        return history.record(at, {key: Counters(requests, 10 * requests, 5 * requests)})

    assert history.rates(reading(0.0, 0), key).requests is None  # one reading: no rate yet
    assert history.rates(reading(0.5, 3), key).requests == pytest.approx(6.0)  # too close: not kept
    assert history.rates(reading(10.0, 20), key).requests == pytest.approx(2.0)
    late = reading(65.0, 130)  # the reading at 0 s left the window; 10 s is the oldest kept
    rates = history.rates(late, key)
    assert (rates.requests, rates.generation_tokens, rates.window_s) == pytest.approx((2.0, 10.0, 55.0))
    assert [(p.ago_s, p.requests) for p in history.points(late, key)] == [(0.0, pytest.approx(2.0))]
    assert history.rates(late, ("other", "paged")).requests == 0.0  # a series that never moved


# ---- a server with a known history ------------------------------------------------------------------------


@dataclass
class Traffic:
    server: RunningServer
    backend: str
    prompt_tokens: int
    completion_tokens: int
    snapshot: dict
    metrics_text: str


@pytest.fixture(scope="module", params=SERVED_PROFILES)
def traffic(request, tiny_llama, tmp_path_factory) -> Traffic:
    """A server of its own (counters from zero) that served 3 requests, a 400 and a 404."""
    profile = request.param
    config = {"profile": profile, "profiles": {profile: {"models": [model_entry(tiny_llama, profile)]}}}
    server = start_server(config, tmp_path_factory.mktemp(f"dashboard-{profile}"))
    try:
        assert httpx.get(f"{server.base_url}/dashboard.json").status_code == 200  # the rates' first reading
        first_reading = time.monotonic()
        client, prompt_tokens, completion_tokens = server.openai(), 0, 0
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(
                model="tiny", messages=CHAT, max_tokens=4, temperature=0, extra_body={"ignore_eos": True}
            )
            backend, usage = raw.headers["x-tandem-backend"], raw.parse().usage
            prompt_tokens += usage.prompt_tokens
            completion_tokens += usage.completion_tokens
        streamed = {"model": "tiny", "prompt": "abc", "max_tokens": 3, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}  # fmt: skip
        events = httpx.post(f"{server.v1}/completions", json=streamed, timeout=60).text.splitlines()
        usage = json.loads([e for e in events if '"usage":{' in e][-1].removeprefix("data: "))["usage"]
        prompt_tokens += usage["prompt_tokens"]
        completion_tokens += usage["completion_tokens"]
        unknown = {"model": "nope", "messages": CHAT}
        assert httpx.post(f"{server.v1}/chat/completions", json=unknown).status_code == 404
        too_long = {"model": "tiny", "messages": CHAT, "max_tokens": 10**6}
        assert httpx.post(f"{server.v1}/chat/completions", json=too_long).status_code == 400
        time.sleep(max(0.0, 1.1 - (time.monotonic() - first_reading)))  # rates need readings 1 s apart
        response = httpx.get(f"{server.base_url}/dashboard.json")
        assert response.status_code == 200
        metrics_text = httpx.get(f"{server.base_url}/metrics").text
        yield Traffic(server, backend, prompt_tokens, completion_tokens, response.json(), metrics_text)
    finally:
        server.stop()


def _row(snapshot: dict, model: str, backend: str) -> dict:
    rows = [r for r in snapshot["models"] if (r["model"], r["backend"]) == (model, backend)]
    assert len(rows) == 1, snapshot["models"]
    return rows[0]


def test_request_counts_and_tokens_are_exact(traffic):
    snapshot, backend = traffic.snapshot, traffic.backend
    tiny = _row(snapshot, "tiny", backend)
    assert tiny["requests"] == {"2xx": 3, "4xx": 1, "5xx": 0, "other": 0, "total": 4,
                                "codes": {"200": 3, "400": 1}}  # fmt: skip
    unknown = _row(snapshot, "_unknown", "gateway")
    assert unknown["requests"]["4xx"] == unknown["requests"]["total"] == 1
    assert unknown["requests"]["codes"] == {"404": 1}
    assert (tiny["prompt_tokens"], tiny["generation_tokens"]) == (
        traffic.prompt_tokens,
        traffic.completion_tokens,
    )
    totals = snapshot["totals"]
    assert (totals["requests"]["2xx"], totals["requests"]["4xx"], totals["requests"]["total"]) == (3, 2, 5)
    assert totals["generation_tokens"] == traffic.completion_tokens
    assert (tiny["in_flight"], tiny["queued"], totals["in_flight"], totals["queued"]) == (0, 0, 0, 0)
    assert (tiny["latency_s"]["count"], tiny["ttft_s"]["count"], tiny["client_disconnects"]) == (3, 3, 0)


def test_rates_cover_the_traffic_since_the_first_poll(traffic):
    rates = traffic.snapshot["totals"]["rates"]
    assert rates["window_s"] > 0
    assert rates["requests"] * rates["window_s"] == pytest.approx(5)
    assert rates["generation_tokens"] * rates["window_s"] == pytest.approx(traffic.completion_tokens)
    tiny = _row(traffic.snapshot, "tiny", traffic.backend)
    assert tiny["rates"]["requests"] * tiny["rates"]["window_s"] == pytest.approx(4)
    assert sum(p["requests"] for p in tiny["history"]) > 0


def _buckets(metrics_text: str, histogram: str, **labels: str) -> list[tuple[float, float]]:
    return sorted(
        (float(sample.labels["le"]), sample.value)
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == f"{histogram}_bucket" and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@pytest.mark.parametrize(
    ("field", "histogram"),
    [("latency_s", "tandem_request_duration_seconds"), ("ttft_s", "tandem_time_to_first_token_seconds")],
)
def test_quantiles_fall_in_the_bucket_metrics_shows(traffic, field, histogram):
    buckets = _buckets(traffic.metrics_text, histogram, model="tiny", backend=traffic.backend)
    total = buckets[-1][1]
    assert total == 3
    quantiles = _row(traffic.snapshot, "tiny", traffic.backend)[field]
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        index = next(i for i, (_, cumulative) in enumerate(buckets) if cumulative >= q * total)
        upper = buckets[index][0] if index < len(buckets) - 1 else buckets[-2][0]
        lower = buckets[index - 1][0] if 0 < index < len(buckets) - 1 else 0.0
        assert lower <= quantiles[name] <= upper, (name, quantiles, buckets)
    assert quantiles["p50"] <= quantiles["p95"] <= quantiles["p99"]


def test_backend_panels_follow_the_profile(traffic):
    snapshot = traffic.snapshot
    assert [(m["name"], m["backend"]) for m in snapshot["loaded"]] == [("tiny", traffic.backend)]
    assert snapshot["teams"] == []  # no team sent anything
    (engine,) = snapshot["engine"]  # both backends batch: the paged engine and llama.cpp's slots
    assert engine["model"] == "tiny"
    assert 0 <= engine["kv_cache_usage"] <= 1
    assert (engine["running"], engine["waiting"]) == (0, 0)
    assert engine["prefix_cache_queries"] >= traffic.prompt_tokens
    assert engine["prefix_cache_hits"] > 0  # the second chat request repeats the first one's prompt
    assert engine["prefix_cache_hit_rate"] == engine["prefix_cache_hits"] / engine["prefix_cache_queries"]
    assert engine["mean_batch_size"] >= 1
    if traffic.backend == "paged":
        assert snapshot["llamacpp"] is None
    else:
        assert snapshot["llamacpp"]["models_loaded"] == 1
        (model,) = snapshot["llamacpp"]["models"]
        assert model["model"] == "tiny" and model["queue_depth"] == 0 and model["load_seconds"] > 0


def test_page_is_self_contained_and_polls_the_json(traffic):
    response = httpx.get(f"{traffic.server.base_url}/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert 'fetch("/dashboard.json"' in page
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing from elsewhere
    assert "https://" not in page
    assert "/*INITIAL_SNAPSHOT*/" not in page  # the current snapshot is inline, so it draws at once
    inline = page.split('<script id="initial" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(inline)["totals"]["requests"]["total"] == 5


# ---- the page in a real browser ----------------------------------------------------------------------------


def _chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    chromium = require_tool("chromium")
    profile = tmp_path / "chromium-profile"
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, timeout=120, check=True, text=True)


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the RGB rows of an 8-bit RGB/RGBA non-interlaced PNG (the stdlib is enough)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks, offset = {}, 8
    while offset < len(data):
        (length,), kind = struct.unpack(">I", data[offset : offset + 4]), data[offset + 4 : offset + 8]
        chunks.setdefault(kind, []).append(data[offset + 8 : offset + 8 + length])
        offset += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    assert (depth, color, interlace) in ((8, 2, 0), (8, 6, 0)), (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw, stride, rows = zlib.decompress(b"".join(chunks[b"IDAT"])), width * bpp, []
    previous = bytes(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            a, b = line[x - bpp] if x >= bpp else 0, previous[x]
            c = previous[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        previous = bytes(line)
        rows.append(previous if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3))
    return width, height, rows


def test_chromium_renders_the_dashboard(traffic, tmp_path):
    url = f"{traffic.server.base_url}/dashboard"
    png = tmp_path / "dashboard.png"
    _chromium(f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={png}", url, tmp_path=tmp_path)
    width, height, rows = _png_pixels(png.read_bytes())
    assert (width, height) == WINDOW
    pixels = [row[i : i + 3] for row in rows[::4] for i in range(0, len(row), 12)]  # every 4th pixel
    background = max(set(pixels), key=pixels.count)
    assert len(set(pixels)) > 50, "the screenshot is (nearly) blank"
    assert sum(p != background for p in pixels) > len(pixels) // 20, "the screenshot is (nearly) blank"
    assert max(rows[10][30:33]) < 0x40, "no dark header bar: the page's own CSS did not apply"

    # the DOM after the inline script drew the snapshot and polled /dashboard.json (virtual time: 5 s)
    poll = '"GET /dashboard.json HTTP/1.1" 200'
    polls_before = traffic.server.log().count(poll)
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", url, tmp_path=tmp_path).stdout
    models = dom.split('id="models">', 1)[1].split("</tbody>", 1)[0]
    assert "tiny" in models and traffic.backend in models and "_unknown" in models
    updated = dom.split('id="updated">', 1)[1].split("<", 1)[0]
    assert updated.startswith("updated "), updated  # a failed poll says "no data (...)"
    deadline = time.monotonic() + 10  # the access log line may trail the response
    while traffic.server.log().count(poll) <= polls_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert traffic.server.log().count(poll) > polls_before, "the page never polled /dashboard.json"


# ---- access: like /metrics ---------------------------------------------------------------------------------


def test_dashboard_needs_the_master_key_when_metrics_do(tiny_llama, tmp_path):
    config = {"profile": "dev", "profiles": {"dev": {"models": [model_entry(tiny_llama, "dev")]}}}
    env = {"TANDEM_MASTER_KEY": MASTER_KEY}  # the default with access control on
    server = start_server(config, tmp_path, env=env)
    try:
        master = {"authorization": f"Bearer {MASTER_KEY}"}
        created = httpx.post(
            f"{server.base_url}/admin/keys", json={"name": "app", "team": "t"}, headers=master
        )
        other = {"authorization": f"Bearer {created.json()['key']}"}
        for path in ("/dashboard", "/dashboard.json", "/metrics"):
            url = f"{server.base_url}{path}"
            assert httpx.get(url).status_code == 401, path
            assert httpx.get(url, headers=other).status_code == 403, path
            assert httpx.get(url, headers=master).status_code == 200, path
        assert httpx.get(f"{server.base_url}/health").status_code == 200  # still open
    finally:
        server.stop()
