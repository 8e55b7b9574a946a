"""The Responses API behind keys, on two replicas sharing one Redis: previous_response_id across replicas,
a foreign key's 404, keys, limits, usage and metrics as on chat; and a remote model answering with the same
items through its upstream's chat completions."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import model_entry, start_server
from tests.redis_server import running_redis
from tests.responses_support import ROOM, TOOLS, WEATHER

MASTER = "sk-responses-master"

# ---- two replicas on one Redis, access on ------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    yield from running_redis(tmp_path_factory)


@pytest.fixture(scope="module")
def replicas(redis_server, tiny_llama, tmp_path_factory):
    config = {"profile": "dev", "profiles": {"dev": {"models": [model_entry(tiny_llama, "dev")]}}}
    env = {"TANDEM_MASTER_KEY": MASTER, "TANDEM_REDIS_URL": redis_server.url}
    servers = [start_server(config, tmp_path_factory.mktemp(f"responses{i}"), env=env) for i in range(2)]
    yield servers
    for server in servers:
        server.stop()


def _key(server, **fields) -> str:
    response = httpx.post(
        f"{server.base_url}/admin/keys",
        json={"name": "k", **fields},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert response.status_code == 201, response.text
    return response.json()["key"]


def _client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0, timeout=60)


def test_previous_response_id_continues_on_another_replica(replicas, redis_server):
    a, b = replicas
    key = _key(a, team="research")
    first = _client(a, key).responses.create(model="tiny", input="Hello", max_output_tokens=4, temperature=0)
    second = _client(b, key).responses.create(
        model="tiny", input="More", previous_response_id=first.id, max_output_tokens=1, temperature=0
    )
    assert second.previous_response_id == first.id
    alone = _client(b, key).responses.create(model="tiny", input="More", max_output_tokens=1, store=False)
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    # kept in Redis under the keys' prefix, expiring after the retention (30 days by default)
    ttl = int(redis_server.command("TTL", f"tandem:response:{second.id}").decode().strip(":\r\n"))
    assert 30 * 86400 - 60 < ttl <= 30 * 86400
    teammate = _client(b, _key(b, team="research"))  # a team shares its responses
    assert teammate.responses.retrieve(second.id).output_text == second.output_text
    teammate.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        _client(a, key).responses.retrieve(first.id)


def test_a_foreign_key_gets_404(replicas):
    a, b = replicas
    mine = _client(a, _key(a, team="alpha"))
    response = mine.responses.create(model="tiny", input="secret", max_output_tokens=2)
    stranger = _client(b, _key(b, team="beta"))
    loner = _client(b, _key(b))  # no team: only its own
    for client in (stranger, loner):
        for call in (
            lambda c=client: c.responses.retrieve(response.id),
            lambda c=client: c.responses.delete(response.id),
            lambda c=client: c.responses.input_items.list(response.id),
            lambda c=client: c.responses.create(model="tiny", input="x", previous_response_id=response.id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
    assert mine.responses.retrieve(response.id).id == response.id  # still there for its owner
    with pytest.raises(openai.AuthenticationError):
        _client(a, "sk-tandem-000000000000-wrong").responses.create(model="tiny", input="x")


def test_keys_limits_usage_and_metrics_apply_as_on_chat(replicas):
    a, b = replicas
    key = _key(a, team="billing", rpm=2)
    raw = _client(a, key).responses.with_raw_response.create(model="tiny", input="hi", max_output_tokens=3)
    assert raw.headers["x-ratelimit-limit-requests"] == "2" and raw.headers["x-request-id"]
    assert raw.parse().usage.output_tokens == 3
    _client(b, key).responses.create(model="tiny", input="hi", max_output_tokens=3, stream=False)
    with pytest.raises(openai.RateLimitError):
        _client(a, key).responses.create(model="tiny", input="hi", max_output_tokens=3)
    master = {"authorization": f"Bearer {MASTER}"}
    usage = httpx.get(f"{a.base_url}/admin/usage", params={"team": "billing"}, headers=master).json()
    rows = usage["data"] if isinstance(usage, dict) else usage
    assert sum(row["completion_tokens"] for row in rows) == 6
    metrics = httpx.get(f"{a.base_url}/metrics", headers=master).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    generated = [
        v
        for (name, labels), v in samples.items()
        if name == "tandem_generation_tokens_total" and ("team", "billing") in labels
    ]
    assert generated == [3.0]  # this replica served one of the two


# ---- a remote model: the same items, through the upstream's chat completions ----------------------------


@pytest.fixture(scope="module")
def remote_gateway(replicas, tmp_path_factory):
    """A gateway whose `up` is replica a's `tiny`, reached as a remote upstream."""
    up = {
        "name": "up",
        "backend": "remote",
        "remote": {"api_base": replicas[0].v1, "model": "tiny", "api_key_env": "UP_KEY"},
    }
    running = start_server(
        {"profile": "dev", "profiles": {"dev": {"models": [up]}}},
        tmp_path_factory.mktemp("remote-gateway"),
        env={"UP_KEY": MASTER},
    )
    yield running
    running.stop()


def test_a_remote_model_answers_with_the_same_items(remote_gateway, replicas):
    direct = _client(replicas[0], MASTER).responses.create(
        model="tiny", input="Hello", max_output_tokens=6, temperature=0
    )
    client = remote_gateway.openai()
    remote = client.responses.create(model="up", input="Hello", max_output_tokens=6, temperature=0)
    assert remote.output_text == direct.output_text and remote.status == direct.status == "incomplete"
    assert remote.usage.output_tokens == 6 and remote.usage.input_tokens == direct.usage.input_tokens
    with client.responses.stream(model="up", input="Hello", max_output_tokens=6, temperature=0) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert deltas == direct.output_text
    called = client.responses.create(
        model="up",
        input="Weather?",
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=ROOM,
        temperature=0,
    )
    (call,) = called.output
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    follow = client.responses.create(
        model="up",
        previous_response_id=called.id,
        tools=TOOLS,
        max_output_tokens=2,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21C"}],
    )
    assert follow.status == "incomplete" and follow.usage.input_tokens > called.usage.input_tokens
