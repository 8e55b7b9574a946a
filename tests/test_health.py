"""GET /health with access control on: probes (no key) get ok / not ok and nothing else; a tenant's key
sees no more (model names outside its allow-list stay hidden); the master key gets the details.
(Failures and the 503 are covered end to end in test_model_recovery.)"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import model_entry, start_server

MASTER = "sk-master-health-test-0123456789"


@pytest.fixture(scope="module")
def guarded_server(tiny_llama, tmp_path_factory):
    entries = [
        model_entry(tiny_llama, "dev"),
        {**model_entry(tiny_llama, "dev"), "name": "secret", "aliases": []},
    ]
    config = {"profile": "dev", "profiles": {"dev": {"models": entries}}}
    server = start_server(config, tmp_path_factory.mktemp("health"), env={"TANDEM_MASTER_KEY": MASTER})
    yield server
    server.stop()


def test_health_says_only_ok_without_the_master_key(guarded_server):
    url = f"{guarded_server.base_url}/health"
    master = {"authorization": f"Bearer {MASTER}"}
    created = httpx.post(
        f"{guarded_server.base_url}/admin/keys", json={"name": "app", "models": ["tiny"]}, headers=master
    )
    assert created.status_code in (200, 201), created.text
    tenant = {"authorization": f"Bearer {created.json()['key']}"}
    for headers in ({}, tenant, {"authorization": "Bearer sk-tandem-000000000000-wrong"}):
        response = httpx.get(url, headers=headers)
        assert response.status_code == 200 and response.json() == {"status": "ok"}, headers
    details = httpx.get(url, headers=master).json()
    assert details["status"] == "ok" and details["models"] == ["tiny", "secret"]
    assert details["states"] == {"tiny": "unloaded", "secret": "unloaded"} and details["failed"] == []
