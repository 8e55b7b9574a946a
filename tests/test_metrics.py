"""/metrics after a scripted mix of traffic shows every series with the right counts."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SERVED_PROFILES, model_entry, start_server, wait_for_log

CHAT = [{"role": "user", "content": "count the blocks " * 16}]  # long enough to fill KV blocks


@pytest.fixture(scope="module", params=SERVED_PROFILES)
def fresh_server(request, tiny_llama, tmp_path_factory):
    """A server of its own, so that the counters start at zero."""
    profile = request.param
    config = {"profile": profile, "profiles": {profile: {"models": [model_entry(tiny_llama, profile)]}}}
    running = start_server(config, tmp_path_factory.mktemp(f"metrics-{profile}"))
    yield running
    running.stop()


def _samples(server) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{server.base_url}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _total(samples, name: str, **labels: str) -> float:
    """Summed over the labels not named."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in samples.items() if n == name and wanted <= have)


def test_metrics_after_a_traffic_mix(fresh_server):
    server, client = fresh_server, fresh_server.openai()
    prompt_tokens = generated = 0
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", messages=CHAT, max_tokens=4, temperature=0, extra_body={"ignore_eos": True}
        )
        backend, usage = raw.headers["x-tandem-backend"], raw.parse().usage
        prompt_tokens, generated = prompt_tokens + usage.prompt_tokens, generated + usage.completion_tokens
    streamed = {"model": "tiny", "prompt": "abc", "max_tokens": 3, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
    events = httpx.post(f"{server.v1}/completions", json=streamed).text.splitlines()
    stream_usage = json.loads([e for e in events if '"usage":{' in e][-1].removeprefix("data: "))["usage"]
    prompt_tokens += stream_usage["prompt_tokens"]
    generated += stream_usage["completion_tokens"]
    assert (
        httpx.post(f"{server.v1}/chat/completions", json={"model": "nope", "messages": CHAT}).status_code
        == 404
    )
    too_long = {"model": "tiny", "messages": CHAT, "max_tokens": 10**6}
    assert httpx.post(f"{server.v1}/chat/completions", json=too_long).status_code == 400
    long = {**streamed, "max_tokens": 3000, "stream_options": None}
    with (
        httpx.Client() as http,
        http.stream(
            "POST", f"{server.v1}/completions", json=long, headers={"x-request-id": "leaver"}
        ) as response,
    ):
        lines = response.iter_lines()
        next(lines)
    wait_for_log(server, r"request leaver-0 aborted")
    httpx.get(f"{server.base_url}/health")

    samples = _samples(server)
    ok = dict(model="tiny", backend=backend, deployment="tiny", team="none")
    chat, completions = dict(route="/v1/chat/completions"), dict(route="/v1/completions")
    assert _value(samples, "tandem_requests_total", **ok, **chat, status_code="200") == 2
    assert _value(samples, "tandem_requests_total", **ok, **completions, status_code="200") == 2
    assert _value(samples, "tandem_requests_total", **ok, **chat, status_code="400") == 1
    unknown = dict(model="_unknown", backend="gateway", deployment="none", team="none")
    assert _value(samples, "tandem_requests_total", **unknown, **chat, status_code="404") == 1
    assert _total(samples, "tandem_requests_total", status_code="200") == 4  # not /health, /metrics
    labels = dict(model="tiny", backend=backend)
    assert _value(samples, "tandem_request_duration_seconds_count", **labels) == 3
    assert _value(samples, "tandem_time_to_first_token_seconds_count", **labels) == 4
    assert _value(samples, "tandem_time_per_output_token_seconds_count", **labels) == 3
    # one gap per token after the first, for the completed requests and the abandoned one alike
    assert _value(samples, "tandem_inter_token_latency_seconds_count", **labels) == (
        _value(samples, "tandem_generation_tokens_total", **labels, team="none") - 4
    )
    assert _value(samples, "tandem_client_disconnects_total", **labels) == 1
    assert (
        _value(samples, "tandem_prompt_tokens_total", **labels, team="none")
        == prompt_tokens + stream_usage["prompt_tokens"]
    )
    assert _value(samples, "tandem_generation_tokens_total", **labels, team="none") > generated
    assert _value(samples, "tandem_requests_in_flight", **labels) == 0
    assert _value(samples, "tandem_requests_queued", **labels) == 0
    if backend == "paged":  # the engine's own series, with vLLM's meanings
        model = dict(model="tiny")
        assert _value(samples, "tandem_engine_requests_running", **model) == 0
        assert _value(samples, "tandem_engine_requests_waiting", **model) == 0
        assert 0 <= _value(samples, "tandem_engine_kv_cache_usage_ratio", **model) < 1
        assert _value(samples, "tandem_engine_prefix_cache_queries_total", **model) >= prompt_tokens
        hits = _value(samples, "tandem_engine_prefix_cache_hits_total", **model)
        assert hits > 0  # the second chat request repeats the first one's prompt
        assert _value(samples, "tandem_engine_step_batch_size_count", **model) > 0
        computed = _value(samples, "tandem_engine_step_tokens_sum", **model)
        assert computed + hits >= prompt_tokens + generated - 4  # the last token of each is never computed
        assert _value(samples, "tandem_engine_request_queue_time_seconds_count", **model) == 4
        assert _value(samples, "tandem_engine_request_decode_time_seconds_count", **model) >= 3
    if backend == "llamacpp":
        assert _value(samples, "tandem_llamacpp_models_loaded") == 1
        assert _value(samples, "tandem_llamacpp_model_load_seconds", model="tiny") > 0
        assert _value(samples, "tandem_llamacpp_queue_depth", model="tiny") == 0
