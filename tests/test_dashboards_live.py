"""Every PromQL expression of every shipped Grafana dashboard returns data from a real Prometheus scraping a
real tandem that served a scripted mix of traffic: plain and streamed requests, a 400, a 404, a client that
disconnects mid-stream, 429s from a team's rate limit, and a failing upstream that falls back.

Prometheus (Debian package `prometheus`, installed by `make install`) runs on loopback with a copy of
config/prometheus.yml scraping every second; the queries go through its HTTP API with Grafana's variables
filled in ($__rate_interval: 2m, every template variable: All). Without the binary the tests fail, naming
it (`make install` installs it).

"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import RunningServer, free_port, model_entry, start_server
from tests.deploy_support import (
    QUERIES,
    ROOT,
    DashboardQuery,
    documented_metrics,
    instantiate,
    metric_names,
    require_tool,
    template_queries,
)

RATE_INTERVAL = "2m"  # covers both traffic rounds and the scrapes between them
RANGE = "5m"
MASTER_KEY = "sk-dashboards-master"


@dataclass
class Stack:
    tandem: RunningServer
    prometheus_url: str
    prometheus_log: Path
    team_keys: list[str]  # keys of team "research" with low limits, to produce 429s
    eval_time: float = 0.0

    def api(self, path: str, **params) -> dict:
        response = httpx.get(f"{self.prometheus_url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr, time=self.eval_time or time.time())
        return data["result"]

    def successful_scrapes(self) -> float:
        result = self.query('sum_over_time(up{job="tandem"}[1h])')
        return float(result[0]["value"][1]) if result else 0.0

    def wait_for_scrapes(self, count: int, timeout: float = 60) -> None:
        """Until Prometheus has scraped tandem successfully `count` more times."""
        target = self.successful_scrapes() + count
        deadline = time.monotonic() + timeout
        while self.successful_scrapes() < target:
            if time.monotonic() > deadline:
                targets = self.api("targets")["activeTargets"]
                raise AssertionError(f"Prometheus did not scrape tandem {count} times: {targets}")
            time.sleep(0.25)


def _tandem(tiny_llama, workdir: Path) -> RunningServer:
    """tandem with access control on, the tiny model on llama.cpp and on the paged engine, and an upstream
    that never answers (so that its fallback is taken)."""
    llamacpp = model_entry(tiny_llama, "dev", context_length=4096)
    paged = model_entry(
        tiny_llama, "prod", name="tiny-paged", aliases=[], engine={"device": "cpu", "cpu_kv_cache_gib": 0.25}
    )
    flaky = {"name": "flaky", "backend": "remote", "remote": {"api_base": "http://127.0.0.1:9/v1"},
             "fallbacks": ["tiny"], "cooldown_s": 0}  # fmt: skip
    # /metrics open, as docker-compose.yml's gateway runs it: the shipped scrape config sends no credentials
    env = {"TANDEM_LLAMACPP_THREADS": "1", "TANDEM_MASTER_KEY": MASTER_KEY, "TANDEM_METRICS_OPEN": "true"}
    config = {"profile": "dev", "profiles": {"dev": {"models": [llamacpp, paged, flaky]}}}
    return start_server(config, workdir / "stack", env=env)


def _team_keys(tandem: RunningServer) -> list[str]:
    """Two keys of team "research": one that hits its requests-per-minute limit, one its tokens-per-minute."""
    keys = []
    for name, limits in (("by-requests", {"rpm": 2}), ("by-tokens", {"tpm": 50})):
        body = {"name": name, "team": "research", **limits}
        response = httpx.post(f"{tandem.base_url}/admin/keys", json=body, headers=_master())
        assert response.status_code == 201, response.text
        keys.append(response.json()["key"])
    return keys


def _master() -> dict[str, str]:
    return {"authorization": f"Bearer {MASTER_KEY}"}


def _prometheus_config(tandem_port: int) -> dict:
    """The shipped config/prometheus.yml: its `tandem` job, aimed at the test's tandem, scraping every 1 s."""
    shipped = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text())
    (job,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "tandem"]
    job = {**job, "static_configs": [{"targets": [f"127.0.0.1:{tandem_port}"]}]}
    return {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [job]}  # fmt: skip


@pytest.fixture(scope="module")
def stack(tiny_llama, tmp_path_factory) -> Iterator[Stack]:
    prometheus = require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("dashboards-live")
    tandem = _tandem(tiny_llama, workdir)
    process = None
    try:
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(_prometheus_config(int(tandem.base_url.rsplit(":", 1)[1]))))
        port = free_port()
        log = workdir / "prometheus.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [prometheus, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        stack = Stack(tandem, f"http://127.0.0.1:{port}", log, _team_keys(tandem))
        _wait_until_ready(stack, process)
        stack.wait_for_scrapes(1)
        # Two rounds: the first creates the series, the second increases them between scrapes, so that
        # rate() and histogram_quantile() have something to compute.
        for _ in range(2):
            _drive_traffic(tandem, stack.team_keys)
            stack.wait_for_scrapes(2)
        stack.eval_time = time.time()
        yield stack
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        tandem.stop()


def _wait_until_ready(stack: Stack, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"prometheus exited with {process.returncode}:\n{stack.prometheus_log.read_text()}"
            )
        try:
            if httpx.get(f"{stack.prometheus_url}/-/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"prometheus did not become ready:\n{stack.prometheus_log.read_text()}")


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story."}], "temperature": 0}


def _drive_traffic(tandem: RunningServer, team_keys: list[str]) -> None:
    with httpx.Client(base_url=tandem.v1, timeout=120, headers=_master()) as client:
        ok = client.post("/chat/completions", json={**CHAT, "max_tokens": 8})
        assert ok.status_code == 200, ok.text
        _stream_all(client, "/chat/completions", {**CHAT, "max_tokens": 16, "ignore_eos": True})
        completion = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
        assert client.post("/completions", json=completion).status_code == 200

        malformed = client.post("/chat/completions", json={**CHAT, "temperature": "hot"})
        assert malformed.status_code == 400, malformed.text
        missing = client.post("/chat/completions", json={**CHAT, "model": "no-such-model"})
        assert missing.status_code == 404, missing.text

        # a client that goes away after a few chunks of a long generation
        long = {
            "model": "tiny",
            "prompt": "Go on and on",
            "max_tokens": 3000,
            "ignore_eos": True,
            "stream": True,
        }
        with client.stream("POST", "/completions", json=long) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert [line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data:")]

        shared = "A long shared preamble that the prefix cache should find the second time. " * 4
        for question in ("What next?", "What next?", "And then?"):
            body = {"model": "tiny-paged", "prompt": shared + question, "max_tokens": 8, "temperature": 0}
            assert client.post("/completions", json=body).status_code == 200
            _stream_all(client, "/completions", {**body, "max_tokens": 16, "ignore_eos": True})

        fallback = client.post("/chat/completions", json={**CHAT, "model": "flaky", "max_tokens": 4})
        assert fallback.status_code == 200 and fallback.headers["x-tandem-deployment"] == "tiny"

        for key, max_tokens in zip(team_keys, (2, 20), strict=True):
            team = {"authorization": f"Bearer {key}"}
            codes = [client.post("/chat/completions", json={**CHAT, "max_tokens": max_tokens}, headers=team)
                     .status_code for _ in range(4)]  # fmt: skip
            assert 429 in codes, codes


def _stream_all(client: httpx.Client, path: str, body: dict) -> None:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]" and len(lines) > 3


def _series_count(stack: Stack, metric: str) -> int:
    result = stack.query(f"count({metric})")
    return int(float(result[0]["value"][1])) if result else 0


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.id)
def test_dashboard_expression_returns_data(stack: Stack, query: DashboardQuery):
    expr = instantiate(query.expr, RATE_INTERVAL, RANGE)
    result = stack.query(expr)
    values = [float(sample["value"][1]) for sample in result]
    if not any(math.isfinite(v) for v in values):
        series = {name: _series_count(stack, name) for name in sorted(metric_names(query.expr))}
        problem = "no data" if not result else f"only NaN/Inf ({result})"
        pytest.fail(f"{problem} for {expr}\nseries per metric: {series}")


@pytest.mark.parametrize(("dashboard", "query"), template_queries(), ids=lambda x: str(x))
def test_template_variable_has_values(stack: Stack, dashboard: str, query: str):
    metric, label = query.removeprefix("label_values(").removesuffix(")").split(",")
    values = stack.api(f"label/{label.strip()}/values", **{"match[]": metric.strip()})
    assert values, f"{dashboard}: {query} has no values"
    if label.strip() == "model":
        assert "tiny" in values


def test_every_scraped_tandem_metric_is_documented(stack: Stack):
    scraped = {name for name in stack.api("label/__name__/values") if name.startswith("tandem_")}
    assert scraped, "Prometheus has no tandem_* series"
    assert sorted(scraped - set(documented_metrics())) == []
