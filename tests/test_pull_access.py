"""Model management on a shared endpoint: pull, create, copy and delete are the master key's (or a key's that
opted in with manage_models), and a pull stays inside its disk quota (TANDEM_PULL_QUOTA_GB) — refused up
front when the Hub announces too much, stopped and cleaned up when the bytes outgrow what was announced.

A real server with access control on, downloading from the fake Hub (tests/fake_hub.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import model_entry, start_server
from tests.fake_hub import FakeHub

MASTER = "sk-pull-master"
QUOTA_BYTES = 6 * 2**20  # TANDEM_PULL_QUOTA_GB below: room for the tiny GGUF, not for 16 MiB
BIG = 16 * 2**20


@pytest.fixture(scope="module")
def hub(tiny_llama):
    hub = FakeHub()
    gguf = tiny_llama.gguf_path.read_bytes()
    assert len(gguf) < QUOTA_BYTES / 2, "the tiny GGUF must fit the test's quota twice"
    hub.add_repo("org/attacker-gguf", {"model.gguf": gguf})
    hub.add_repo("org/allowed-gguf", {"model.gguf": gguf})
    hub.add_repo("org/huge-gguf", {"huge.gguf": gguf + bytes(BIG - len(gguf))})
    liar = hub.add_repo("org/liar-gguf", {"liar.gguf": gguf + bytes(BIG - len(gguf))})
    liar.announced["liar.gguf"] = len(gguf)  # model info claims it is small: only the transfer tells
    hub.throttled["org/liar-gguf"] = 0.0  # sent a MiB at a time, so the client can stop it midway
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def server(hub, tiny_llama, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pull-access")
    entry = model_entry(tiny_llama, "dev", name="shared-llm", aliases=[])
    config = {"profile": "dev", "profiles": {"dev": {"models": [entry]}}}
    env = {
        "TANDEM_MASTER_KEY": MASTER,
        "TANDEM_PULL_QUOTA_GB": str(QUOTA_BYTES / 1e9),
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(workdir / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0",
    }
    running = start_server(config, workdir, env=env)
    yield running, workdir
    running.stop()


def _key(base_url: str, **fields) -> str:
    response = httpx.post(f"{base_url}/admin/keys", json={"name": "k", **fields},
                          headers={"authorization": f"Bearer {MASTER}"})  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()["key"]


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _pull(base_url: str, key: str, **body) -> httpx.Response:
    return httpx.post(f"{base_url}/api/pull", json={"stream": False, **body}, headers=_auth(key), timeout=60)


def test_a_plain_key_cannot_pull_create_copy_or_delete(server, hub):
    running, workdir = server
    plain = _key(running.base_url)
    before = len(hub.requests)
    # the reported attack: replace a model other tenants use with one's own GGUF
    response = _pull(running.base_url, plain, model="hf://org/attacker-gguf", name="copy-of-shared")
    assert response.status_code == 403, response.text
    assert list(response.json()) == ["error"] and "manage_models" in response.json()["error"]
    assert hub.requests[before:] == []  # refused before the Hub was asked anything
    attempts = [
        ("POST", "/api/create", {"model": "mine", "from": "shared-llm", "stream": False}),
        ("POST", "/api/copy", {"source": "shared-llm", "destination": "mine"}),
        ("DELETE", "/api/delete", {"model": "shared-llm"}),
    ]
    for method, path, body in attempts:
        refused = httpx.request(method, f"{running.base_url}{path}", json=body, headers=_auth(plain))
        assert refused.status_code == 403 and "error" in refused.json(), (path, refused.text)
    tags = httpx.get(f"{running.base_url}/api/tags", headers=_auth(plain)).json()["models"]
    assert [m["model"] for m in tags] == ["shared-llm:latest"]
    assert not (workdir / "home" / "models" / "pulled").exists()


def test_a_key_created_with_manage_models_may_pull(server):
    running, _ = server
    created = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", "create", "--name", "ops", "--manage-models",
         "--url", running.base_url],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TANDEM_MASTER_KEY": MASTER},
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    manager = created.stdout.strip()
    listed = httpx.get(f"{running.base_url}/admin/keys", headers=_auth(MASTER)).json()["data"]
    assert {k["name"]: k["manage_models"] for k in listed}["ops"] is True
    response = _pull(running.base_url, manager, model="hf://org/allowed-gguf")
    assert response.status_code == 200, response.text
    generated = httpx.post(f"{running.base_url}/api/generate", headers=_auth(manager), timeout=60,
                           json={"model": "allowed-gguf", "prompt": "hi", "stream": False,
                                 "options": {"num_predict": 2}})  # fmt: skip
    assert generated.status_code == 200 and generated.json()["eval_count"] == 2, generated.text


def test_a_pull_announced_over_the_quota_is_refused_before_downloading(server, hub):
    running, workdir = server
    before = len(hub.requests)
    for stream in (False, True):
        response = _pull(running.base_url, MASTER, model="hf://org/huge-gguf", stream=stream)
        assert response.status_code == 507, response.text
        assert "TANDEM_PULL_QUOTA_GB" in response.json()["error"]
    assert not any("/resolve/" in r.path for r in hub.requests[before:])  # model info only, no file
    assert not (workdir / "home" / "models" / "pulled" / "org" / "huge-gguf").exists()


def test_a_download_that_outgrows_its_announced_size_is_stopped_and_removed(server, hub):
    running, workdir = server
    with httpx.stream("POST", f"{running.base_url}/api/pull", json={"model": "hf://org/liar-gguf"},
                      headers=_auth(MASTER), timeout=60) as response:  # fmt: skip
        assert response.status_code == 200  # the announced size fits: the stream has started
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert "error" in lines[-1] and "grew past" in lines[-1]["error"], lines[-3:]
    completed = max(line.get("completed", 0) for line in lines)
    assert completed < BIG  # stopped midway, not after the whole file
    folder = workdir / "home" / "models" / "pulled" / "org" / "liar-gguf"
    assert not folder.exists() or not [p for p in folder.rglob("*") if p.is_file()]
    tags = httpx.get(f"{running.base_url}/api/tags", headers=_auth(MASTER)).json()["models"]
    assert "liar-gguf:latest" not in [m["model"] for m in tags]
