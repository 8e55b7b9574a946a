"""With access control on, nothing around the generation endpoints leaks past a key or skips its limits:

- /metrics, /dashboard and /dashboard.json show every team's traffic and every model's name, so they need
  the master key (401 without a valid key, 403 with any other key), unless TANDEM_METRICS_OPEN=true opens
  them for a Prometheus without credentials;
- Ollama's load-only requests (/api/generate without a prompt, /api/chat without messages) load a model
  like any request does, so they count against the key's requests-per-minute (they reloaded a shared model
  10 times past a key's rpm).
"""

from __future__ import annotations

import httpx
import pytest

from gateway.auth import AuthSettings
from gateway.settings import Settings
from tests.conftest import model_entry, start_server

MASTER = "sk-surfaces-master"
METRICS_PATHS = ("/metrics", "/dashboard", "/dashboard.json")


def _config(tiny_llama) -> dict:
    return {"profile": "dev", "profiles": {"dev": {"models": [model_entry(tiny_llama, "dev")]}}}


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    running = start_server(_config(tiny_llama), tmp_path_factory.mktemp("surfaces"),
                           env={"TANDEM_MASTER_KEY": MASTER})  # fmt: skip
    yield running
    running.stop()


def _key(server, **fields) -> dict[str, str]:
    response = httpx.post(f"{server.base_url}/admin/keys", json={"name": "k", **fields},
                          headers={"authorization": f"Bearer {MASTER}"})  # fmt: skip
    assert response.status_code == 201, response.text
    return {"authorization": f"Bearer {response.json()['key']}"}


def test_metrics_and_dashboard_need_the_master_key_by_default(server):
    tenant = _key(server, team="alpha", models=["other-*"])  # may not even see `tiny`
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    served = httpx.post(f"{server.v1}/chat/completions", json=chat, timeout=60,
                        headers={"authorization": f"Bearer {MASTER}"})  # fmt: skip
    assert served.status_code == 200, served.text
    for path in METRICS_PATHS:
        url = f"{server.base_url}{path}"
        anonymous = httpx.get(url)
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key", path
        refused = httpx.get(url, headers=tenant)
        assert refused.status_code == 403 and "TANDEM_METRICS_OPEN" in refused.json()["error"]["message"]
        assert "tiny" not in refused.text and "alpha" not in refused.text
        allowed = httpx.get(url, headers={"authorization": f"Bearer {MASTER}"})
        assert allowed.status_code == 200 and "tiny" in allowed.text, path


def test_metrics_open_serves_a_prometheus_without_credentials(tiny_llama, tmp_path):
    env = {"TANDEM_MASTER_KEY": MASTER, "TANDEM_METRICS_OPEN": "true"}
    running = start_server(_config(tiny_llama), tmp_path, env=env)
    try:
        for path in METRICS_PATHS:
            assert httpx.get(f"{running.base_url}{path}").status_code == 200, path
        assert httpx.get(f"{running.v1}/models").status_code == 401  # only the metrics pages are open
    finally:
        running.stop()


def test_the_old_metrics_setting_is_not_silently_ignored(monkeypatch):
    monkeypatch.setenv("TANDEM_METRICS_REQUIRE_KEY", "false")  # it used to mean "open"
    with pytest.raises(ValueError, match="TANDEM_METRICS_OPEN"):
        Settings()
    monkeypatch.setenv("TANDEM_METRICS_REQUIRE_KEY", "true")  # what is now the default: accepted
    assert Settings().metrics_open is False


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/generate", {"model": "tiny", "prompt": ""}), ("/api/chat", {"model": "tiny", "messages": []})],
)
def test_load_only_requests_count_against_the_keys_rpm(server, path, body):
    key = _key(server, rpm=2)
    answers = []
    for keep_alive in (0, "5m", 0, "5m", 0, "5m"):  # unload, load, ...: each would cost a load
        response = httpx.post(f"{server.base_url}{path}", json={**body, "keep_alive": keep_alive},
                              headers=key, timeout=60)  # fmt: skip
        answers.append(response)
    assert [r.status_code for r in answers] == [200, 200, 429, 429, 429, 429], [r.text for r in answers]
    assert [r.json()["done_reason"] for r in answers[:2]] == ["unload", "load"]
    refused = answers[2]
    assert list(refused.json()) == ["error"] and int(refused.headers["retry-after"]) >= 1
    assert answers[1].headers["x-ratelimit-limit-requests"] == "2"
    loaded = httpx.get(f"{server.base_url}/api/ps", headers=key).json()["models"]
    assert [m["model"] for m in loaded] == ["tiny:latest"]  # the refused unloads did not unload it


def test_an_empty_master_key_leaves_access_control_off(monkeypatch):
    """docker-compose passes an unset ${TANDEM_MASTER_KEY:-} as an empty string: that is off, not a key."""
    monkeypatch.setenv("TANDEM_MASTER_KEY", "")
    assert Settings().auth_settings(AuthSettings()).master_key is None
