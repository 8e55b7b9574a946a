"""Remote upstreams that stall, stream slowly, drop pooled connections or answer a stream with a web page.

Separate connect, first-byte and idle deadlines (not one total one), an error event at the end of a stream
that broke, one retry on a stale pooled connection, and a 502 for a "stream" that is not an event stream.
"""

from __future__ import annotations

import json

import httpx
import pytest

from backends.remote.upstream import UpstreamTimeouts
from gateway.config import ConfigError, parse_config
from tests.conftest import start_server
from tests.misbehaving_upstream import SLOW_EVENTS, MisbehavingUpstream

CHAT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def upstream():
    server = MisbehavingUpstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    def remote(name: str, behaviour: str, model: dict | None = None, **remote_fields) -> dict:
        spec = {"api_base": upstream.base(behaviour), "model": "mis", **remote_fields}
        return {"name": name, "backend": "remote", "remote": spec, **(model or {})}

    models = [
        remote("stall", "stall", idle_timeout_s=1),
        remote("stall-litellm", "stall", idle_timeout_s=1, client="litellm"),
        remote("silent", "silent", first_byte_timeout_s=1),
        remote("slow", "slow", {"timeout_s": 1}),  # a healthy stream that lasts longer than timeout_s
        remote("slow-litellm", "slow", {"timeout_s": 1}, client="litellm"),
        remote("stale", "stale"),
        remote("stale-litellm", "stale", client="litellm"),
        remote("plain", "plain"),
        remote("broken", "broken"),
    ]
    server = start_server(
        {"profiles": {"dev": {"models": models}}}, tmp_path_factory.mktemp("remote-timeouts")
    )
    yield server
    server.stop()


def _events(gateway, model: str) -> list[str]:
    """The data lines of a streamed chat, as the client got them (the stream must end on its own)."""
    body = {"model": model, "messages": CHAT, "stream": True}
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200, response.read()
        return [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]


@pytest.mark.parametrize("model", ["stall", "stall-litellm"])
def test_an_upstream_that_goes_silent_mid_stream_ends_it_with_an_error_event(gateway, model):
    events = _events(gateway, model)
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_timeout" and "silent for 1s" in error["message"]
    assert "[DONE]" not in events


def test_an_unstreamed_answer_that_stalls_midway_times_out(gateway):
    body = {"model": "stall", "messages": CHAT}
    response = httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=30)
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "upstream_timeout" and "stalled for 1s" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_that_never_answers_times_out_at_the_first_byte(gateway, stream):
    body = {"model": "silent", "messages": CHAT, "stream": stream}
    response = httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=30)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize("model", ["slow", "slow-litellm"])
def test_a_stream_longer_than_timeout_s_with_small_gaps_completes(gateway, model):
    events = _events(gateway, model)
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                   if json.loads(e).get("choices"))  # fmt: skip
    assert text == "".join(f"w{i} " for i in range(SLOW_EVENTS))


@pytest.mark.parametrize("model", ["stale", "stale-litellm"])
def test_a_pooled_connection_the_upstream_dropped_is_retried_once(gateway, upstream, model):
    before = upstream.requests.get("stale", 0)
    for stream in (False, True, False, True):  # each request after the first finds its connection dropped
        body = {"model": model, "messages": CHAT, "stream": stream}
        response = httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert "fine" in response.text
    assert upstream.requests["stale"] - before > 4  # the drops did happen, and were retried


def test_a_stream_that_breaks_midway_ends_with_an_error_event(gateway):
    events = _events(gateway, "broken")
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "half"
    assert json.loads(events[-1])["error"]["code"] in ("upstream_unreachable", "upstream_error")
    assert "[DONE]" not in events


def test_a_200_that_is_not_an_event_stream_is_an_upstream_error(gateway):
    body = {"model": "plain", "messages": CHAT, "stream": True}
    response = httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=30)
    assert response.status_code == 502
    error = response.json()["error"]
    assert "text/plain" in error["message"] and "not an event stream" in error["message"]


def test_a_200_that_is_not_json_is_an_upstream_error(gateway):
    body = {"model": "plain", "messages": CHAT}
    response = httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=30)
    assert response.status_code == 502
    assert "not JSON" in response.json()["error"]["message"]


def test_remote_timeouts_come_from_the_config_with_defaults():
    def timeouts(remote_fields: dict, **model_fields):
        remote = {"api_base": "http://up:8000/v1", **remote_fields}
        entry = {"name": "m", "backend": "remote", "remote": remote, **model_fields}
        spec = parse_config({"profiles": {"dev": {"models": [entry]}}}, "test").profiles["dev"].models[0]
        return spec.remote.timeouts(spec.timeout_s)

    assert timeouts({}) == UpstreamTimeouts(connect_s=10, first_byte_s=600, idle_s=60)
    assert timeouts({}, timeout_s=30).first_byte_s == 30  # the model's timeout_s is the first byte's
    explicit = {"connect_timeout_s": 2, "first_byte_timeout_s": 90, "idle_timeout_s": 5}
    assert timeouts(explicit, timeout_s=30) == UpstreamTimeouts(connect_s=2, first_byte_s=90, idle_s=5)
    with pytest.raises(ConfigError, match="idle_timeout_s"):
        timeouts({"idle_timeout_s": 0})
