"""Anthropic's Messages API behind keys: x-api-key or Bearer, a 401 in Anthropic's envelope, allow-lists,
limits, usage and metrics as on chat; and a remote upstream reached through its chat API."""

from __future__ import annotations

import time

import anthropic
import httpx
import jsonschema
import pytest

from tests.anthropic_support import (
    ASK,
    GREEDY,
    ROOM,
    TOOLS,
    WEATHER,
    create,
    envelope,
    post,
    prompt_tokens,
    sdk_client,
)
from tests.conftest import model_entry, start_server

# ---- keys, limits, the envelope of refusals ----------------------------------------------------------------

MASTER = "sk-anthropic-master"


@pytest.fixture(scope="module")
def keyed_server(tiny_llama, tmp_path_factory):
    entry = model_entry(tiny_llama, "dev", preload=True)
    config = {"profile": "dev", "profiles": {"dev": {"models": [entry]}}}
    env = {"TANDEM_MASTER_KEY": MASTER, "TANDEM_MAX_REQUEST_BYTES": str(64 * 1024)}
    running = start_server(config, tmp_path_factory.mktemp("anthropic-keys"), env=env)
    yield running
    running.stop()


def _key(server, **fields) -> str:
    response = post(f"{server.base_url}/admin/keys", json={"name": "k", **fields},
                          headers={"authorization": f"Bearer {MASTER}"})  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()["key"]


def test_keys_are_taken_as_x_api_key_or_bearer(keyed_server):
    key = _key(keyed_server)
    by_header = sdk_client(keyed_server.base_url, api_key=key).messages.create(
        model="tiny", max_tokens=2, messages=ASK
    )
    assert by_header.usage.output_tokens > 0
    bearer = anthropic.Anthropic(base_url=keyed_server.base_url, auth_token=key, api_key=None, max_retries=0)
    assert bearer.messages.count_tokens(model="tiny", messages=ASK).input_tokens == prompt_tokens(
        by_header.usage
    )
    with pytest.raises(anthropic.AuthenticationError) as refused:
        sdk_client(keyed_server.base_url, api_key="sk-tandem-000000000000-wrong").messages.create(
            model="tiny", max_tokens=2, messages=ASK
        )
    assert refused.value.status_code == 401
    message = refused.value.body["error"]["message"]
    assert refused.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": message},
    }
    missing = post(f"{keyed_server.v1}/messages", json={"model": "tiny", "max_tokens": 2, "messages": ASK})
    assert "x-api-key" in envelope(missing, 401, "authentication_error")


def test_usage_and_metrics_count_messages(keyed_server):
    client = sdk_client(keyed_server.base_url, api_key=_key(keyed_server, team="anthropic-usage"))
    unary = client.messages.create(model="tiny", max_tokens=3, messages=ASK)
    with client.messages.stream(model="tiny", max_tokens=4, messages=ASK) as stream:
        streamed = stream.get_final_message()
    master = {"authorization": f"Bearer {MASTER}"}
    expected = {"model": "tiny", "requests": 2, "prompt_tokens": 2 * prompt_tokens(unary.usage),
                "completion_tokens": unary.usage.output_tokens + streamed.usage.output_tokens}  # fmt: skip
    deadline = time.monotonic() + 10  # a stream's usage is settled as it ends, just after its last event
    while True:
        rows = httpx.get(f"{keyed_server.base_url}/admin/usage", params={"team": "anthropic-usage"},
                         headers=master).json()["data"]  # fmt: skip
        got = [{name: row[name] for name in expected} for row in rows]
        if got == [expected] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == [expected]
    metrics = httpx.get(f"{keyed_server.base_url}/metrics", headers=master).text
    assert 'tandem_requests_total{backend="llamacpp",deployment="tiny",model="tiny",route="/v1/messages",' \
           'status_code="200",team="anthropic-usage"} 2.0' in metrics  # fmt: skip


def test_a_keys_models_and_limits_hold(keyed_server):
    other = sdk_client(keyed_server.base_url, api_key=_key(keyed_server, models=["other-*"]))
    with pytest.raises(anthropic.NotFoundError):
        other.messages.create(model="tiny", max_tokens=2, messages=ASK)
    limited = _key(keyed_server, rpm=1)
    headers = {"x-api-key": limited}
    body = {"model": "tiny", "max_tokens": 2, "messages": ASK}
    first = post(f"{keyed_server.v1}/messages", json=body, headers=headers)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "1"
    refused = post(f"{keyed_server.v1}/messages", json={**body, "stream": True}, headers=headers)
    envelope(refused, 429, "rate_limit_error")
    assert "retry-after" in refused.headers
    too_large = post(f"{keyed_server.v1}/messages", headers={"x-api-key": _key(keyed_server)},
                           json={**body, "system": "x" * 70_000})  # fmt: skip
    envelope(too_large, 413, "request_too_large")


# ---- a remote upstream -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def routed(keyed_server, tmp_path_factory):
    """A gateway whose models are the keyed server's `tiny`, reached as an OpenAI upstream (direct and
    through litellm)."""
    remote = {"api_base": keyed_server.v1, "model": "tiny", "api_key_env": "UPSTREAM_KEY"}
    models = [
        {"name": "up", "backend": "remote", "remote": remote},
        {"name": "up-litellm", "backend": "remote", "remote": {**remote, "client": "litellm"}},
    ]
    config = {"profile": "dev", "profiles": {"dev": {"models": models}}}
    running = start_server(config, tmp_path_factory.mktemp("anthropic-routed"), env={"UPSTREAM_KEY": MASTER})
    yield running
    running.stop()


@pytest.mark.parametrize("name", ["up", "up-litellm"])
def test_a_remote_model_answers_through_its_chat_api(routed, keyed_server, name):
    local = sdk_client(keyed_server.base_url, api_key=MASTER)
    client = sdk_client(routed.base_url)
    expected = create(local, max_tokens=10)
    raw = client.messages.with_raw_response.create(model=name, max_tokens=10, messages=ASK, **GREEDY)
    assert raw.headers["x-tandem-backend"] == "remote"
    answer = raw.parse()
    assert answer.content[0].text == expected.content[0].text and answer.model == name
    assert (prompt_tokens(answer.usage), answer.usage.output_tokens) == (
        prompt_tokens(expected.usage),
        expected.usage.output_tokens,
    )
    with client.messages.stream(model=name, max_tokens=10, messages=ASK, **GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == expected.content[0].text
    assert (
        final.stop_reason == expected.stop_reason
        and final.usage.output_tokens == expected.usage.output_tokens
    )
    if name == "up":  # the calls are mapped here, not by the transport: once is enough
        choice = {"type": "tool", "name": "get_weather"}
        forced = client.messages.create(
            model=name, max_tokens=ROOM, messages=ASK, tools=TOOLS, tool_choice=choice
        )
        (call,) = [block for block in forced.content if block.type == "tool_use"]
        assert call.name == "get_weather" and forced.stop_reason == "tool_use"
        jsonschema.validate(call.input, WEATHER)
    with pytest.raises(anthropic.BadRequestError, match="remote upstream"):
        client.messages.count_tokens(model=name, messages=ASK)
