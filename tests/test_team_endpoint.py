"""The team-shared endpoint end to end: two real gateways sharing one real Redis, keys made with the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import model_entry, start_server
from tests.redis_server import running_redis

MASTER = "sk-master-test-0123456789"
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    yield from running_redis(tmp_path_factory)


@pytest.fixture(scope="module")
def replicas(redis_server, tiny_llama, tmp_path_factory):
    """Two gateway processes, one Redis: what a load balancer would spread a team's traffic over."""
    entries = [
        model_entry(tiny_llama, "dev"),
        {**model_entry(tiny_llama, "dev"), "name": "other", "aliases": []},
    ]
    config = {"profile": "dev", "profiles": {"dev": {"models": entries}}}
    env = {"TANDEM_MASTER_KEY": MASTER, "TANDEM_REDIS_URL": redis_server.url}
    servers = [start_server(config, tmp_path_factory.mktemp(f"replica{i}"), env=env) for i in range(2)]
    yield servers
    for server in servers:
        server.stop()


def _cli(server, *args: str) -> subprocess.CompletedProcess:
    env = {"TANDEM_MASTER_KEY": MASTER, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--url", server.base_url],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip


def _create_key(server, *args: str) -> str:
    result = _cli(server, "keys", "create", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0, timeout=60)


def test_keys_are_required_once_a_master_key_is_set(replicas):
    a, _ = replicas
    assert httpx.get(f"{a.v1}/models").status_code == 401
    with pytest.raises(openai.AuthenticationError) as caught:
        _client(a, "sk-tandem-000000000000-wrong").models.list()
    assert caught.value.body["code"] == "invalid_api_key"
    assert "wrong" not in caught.value.body["message"]
    assert httpx.get(f"{a.base_url}/api/tags", headers={"x-api-key": MASTER}).status_code == 200
    assert httpx.get(f"{a.base_url}/health").status_code == 200  # probes stay open


def test_rpm_limit_is_shared_across_replicas(replicas):
    a, b = replicas
    key = _create_key(a, "--name", "ci-bot", "--team", "research", "--rpm", "4")
    clients = [_client(a, key), _client(b, key)]
    for i in range(4):
        raw = clients[i % 2].chat.completions.with_raw_response.create(
            model="tiny", messages=CHAT, max_tokens=2
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "4"
        assert int(raw.headers["x-ratelimit-remaining-requests"]) == 3 - i
    with pytest.raises(openai.RateLimitError) as caught:
        clients[0].chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    response = caught.value.response
    assert response.headers["retry-after"] and response.headers["x-ratelimit-remaining-requests"] == "0"
    assert caught.value.body["code"] == "rate_limit_exceeded"
    metrics = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(
            httpx.get(f"{a.base_url}/metrics", headers={"authorization": f"Bearer {MASTER}"}).text
        )
        for s in family.samples
    }
    assert metrics[("tandem_rate_limit_rejections_total", (("limit", "rpm"), ("team", "research")))] == 1


def test_concurrent_admissions_across_replicas_are_exact(replicas):
    a, b = replicas
    key = _create_key(a, "--name", "burst", "--rpm", "6")
    body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
    headers = {"authorization": f"Bearer {key}"}

    def call(i: int) -> int:
        server = (a, b)[i % 2]
        return httpx.post(f"{server.v1}/completions", json=body, headers=headers, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(call, range(16)))
    assert codes.count(200) == 6 and codes.count(429) == 10


def test_revoke_on_one_replica_is_refused_at_once_on_the_other(replicas):
    a, b = replicas
    key = _create_key(a, "--name", "temp")
    assert _client(b, key).models.list().data
    key_id = key.split("-")[2]
    assert _cli(a, "keys", "revoke", key_id).returncode == 0
    with pytest.raises(openai.AuthenticationError):
        _client(b, key).models.list()


def test_model_globs_restrict_what_a_key_sees(replicas):
    a, _ = replicas
    key = _create_key(a, "--name", "narrow", "--models", "oth*")
    client = _client(a, key)
    assert [m.id for m in client.models.list().data] == ["other"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1)
    assert client.chat.completions.create(model="other", messages=CHAT, max_tokens=1).choices


def test_only_the_master_key_changes_models(replicas):
    a, _ = replicas
    key = _create_key(a, "--name", "user")
    body = {"model": "copy", "from": "tiny"}
    assert httpx.post(f"{a.base_url}/api/create", json=body, headers={"x-api-key": key}).status_code == 403
    assert httpx.post(f"{a.base_url}/api/create", json=body, headers={"x-api-key": MASTER}).status_code == 200


def test_usage_is_recorded_per_key_and_team(replicas):
    a, b = replicas
    key = _create_key(a, "--name", "meter", "--team", "billing")
    for server in (a, b):
        out = _client(server, key).completions.create(model="tiny", prompt="count", max_tokens=3, extra_body={
            "ignore_eos": True})  # fmt: skip
        assert out.usage.completion_tokens == 3
    stream = _client(a, key).chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, stream=True,
                                                    extra_body={"ignore_eos": True})  # fmt: skip
    assert len([c for c in stream if c.choices and c.choices[0].delta.content is not None]) >= 1
    report = _cli(a, "usage", "--team", "billing", "--json")
    assert report.returncode == 0, report.stderr
    rows = json.loads(report.stdout)["data"]
    assert sum(r["requests"] for r in rows) == 3
    assert sum(r["completion_tokens"] for r in rows) == 8
    assert {r["model"] for r in rows} == {"tiny"}


def test_redis_down_fails_closed_with_a_clear_503(replicas, redis_server):
    a, _ = replicas
    key = _create_key(a, "--name", "after")
    redis_server.pause()
    try:
        refused = httpx.get(f"{a.v1}/models", headers={"authorization": f"Bearer {key}"}, timeout=10)
    finally:
        redis_server.resume()
    assert refused.status_code == 503
    assert "error" in refused.json() and refused.headers.get("retry-after")
    # Redis is back: the circuit breaker's background probe sees it answer and requests use it again
    deadline, headers = time.monotonic() + 10, {"authorization": f"Bearer {key}"}
    while (again := httpx.get(f"{a.v1}/models", headers=headers)).status_code == 503:
        assert time.monotonic() < deadline, again.text
        time.sleep(0.1)
    assert again.status_code == 200, again.text


def test_redis_down_fail_open_serves_known_keys(redis_server, tiny_llama, tmp_path_factory):
    config = {"profile": "dev", "profiles": {"dev": {"models": [model_entry(tiny_llama, "dev")]}}}
    env = {"TANDEM_MASTER_KEY": MASTER, "TANDEM_REDIS_URL": redis_server.url,
           "TANDEM_REDIS_FAILURE_MODE": "fail_open"}  # fmt: skip
    server = start_server(config, tmp_path_factory.mktemp("fail-open"), env=env)
    try:
        key = _create_key(server, "--name", "regular", "--rpm", "100")
        assert _client(server, key).chat.completions.create(model="tiny", messages=CHAT, max_tokens=1).choices
        redis_server.pause()
        try:
            served = _client(server, key).chat.completions.create(model="tiny", messages=CHAT, max_tokens=1)
        finally:
            redis_server.resume()
        assert served.choices
        assert "access store unreachable" in server.log() and "fail_open: serving" in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "/admin/keys", {"name": "g", "models": ["llama-[3"]}, 400, "is not a model glob"),
        ("POST", "/admin/keys", {"name": "g", "models": ["has space"]}, 400, "is not a model glob"),
        ("POST", "/admin/keys", {"name": "n", "rpm": -5}, 400, "rpm"),
        ("POST", "/admin/keys", {"name": "n", "budget_tokens": 10, "budget_period": "often"}, 400, "budget"),
        ("POST", "/admin/keys", {"name": ""}, 400, "name"),
        ("PUT", "/admin/teams/research", {"tpm": 0}, 400, "tpm"),
        ("DELETE", "/admin/keys/sk-tandem-000000000000", None, 404, "no api key"),
    ],
)
def test_bad_admin_input_gets_a_clear_error(replicas, method, path, body, status, says):
    a, _ = replicas
    response = httpx.request(method, f"{a.base_url}{path}", json=body, headers={"x-api-key": MASTER})
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"].lower() + str(response.json()["error"]["param"])
