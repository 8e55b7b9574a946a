"""The admin API and the `tandem keys | teams | usage` CLI end to end, against a small app served by
uvicorn that includes admin_router and one protected route wired the way the lead wires /v1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway.auth import AuthSettings, admin_router, open_access
from gateway.auth.cli import main as cli
from gateway.errors import install_error_handlers, model_not_found
from tests.redis_server import running_redis
from tests.test_auth_support import MASTER, STORES, settings_for


class EchoRequest(BaseModel):
    model: str
    max_tokens: int = 16


def build_app(settings: AuthSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.access = await open_access(settings)
        try:
            yield
        finally:
            await app.state.access.aclose()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(admin_router)

    @app.post("/v1/echo")
    async def echo(
        body: EchoRequest,
        request: Request,
        authorization: str | None = Header(None),
        x_api_key: str | None = Header(None),
    ) -> JSONResponse:
        access = request.app.state.access
        principal = await access.authenticate(authorization, x_api_key)
        if not access.may_use(principal, body.model):
            raise model_not_found(body.model)
        prompt_tokens = 4
        admission = await access.admit(principal, body.model, prompt_tokens + body.max_tokens)
        try:
            completion_tokens = body.max_tokens // 2  # "generated"
        finally:
            await admission.settle(prompt_tokens, completion_tokens)
        return JSONResponse({"ok": True}, headers=admission.headers)

    return app


@dataclass
class Served:
    url: str

    def echo(self, key: str, model: str = "tiny") -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/echo",
            json={"model": model},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    yield from running_redis(tmp_path_factory)


@pytest.fixture(scope="module", params=STORES)
def served(request, redis_server) -> Iterator[Served]:
    port = _free_port()
    config = uvicorn.Config(
        build_app(settings_for(request.param, redis_server)), port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the test app did not start"
    yield Served(f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def run_cli(served: Served, monkeypatch, capsys):
    monkeypatch.setenv("TANDEM_MASTER_KEY", MASTER)

    def run(*argv: str) -> tuple[int, str, str]:
        command, *rest = argv
        if command in ("keys", "teams"):
            status = cli([command, rest[0], "--url", served.url, *rest[1:]])
        else:
            status = cli([command, "--url", served.url, *rest])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_cli_create_list_use_revoke_and_usage(served: Served, run_cli):
    create = ["--name", "alice", "--team", "ml", "--rpm", "2", "--tpm", "1000", "--models", "tiny*, qwen*"]
    status, out, err = run_cli("keys", "create", *create)
    assert status == 0, err
    key = out.strip()
    assert key.startswith("sk-tandem-") and "\n" not in key and "Save it now" in err
    key_id = key.split("-")[2]

    status, out, _ = run_cli("keys", "list")
    assert status == 0 and key_id in out and f"sk-tandem-{key_id}" in out and "alice" in out
    assert key not in out and key.split("-", 3)[3] not in out  # never the secret
    status, out, _ = run_cli("keys", "list", "--json")
    assert key_id in out and key.split("-", 3)[3] not in out

    first = served.echo(key)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert served.echo(key, model="llama").json()["error"]["code"] == "model_not_found"
    assert served.echo(key).status_code == 200
    refused = served.echo(key)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"] == {
        "message": refused.json()["error"]["message"],
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }

    status, out, _ = run_cli("usage", "--key", key_id)
    assert status == 0
    row = next(line.split() for line in out.splitlines() if key_id in line)
    assert row[1:] == [key_id, "ml", "tiny", "2", "8", "16", "24"]  # 2 requests of 4 + 8 tokens
    status, out, _ = run_cli("usage", "--team", "nobody")
    assert status == 0 and "no requests" in out

    status, out, _ = run_cli("keys", "revoke", key)
    assert status == 0 and f"revoked key {key_id}" in out
    denied = served.echo(key)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    status, out, _ = run_cli("keys", "list")
    assert "revoked" in out


def test_cli_team_limits(served: Served, run_cli):
    status, out, err = run_cli("teams", "set", "search", "--rpm", "1", "--budget-tokens", "500")
    assert status == 0, err
    assert "search" in out and "500/1d" in out
    status, out, _ = run_cli("teams", "show", "search")
    assert status == 0 and "500/1d" in out
    _, out, _ = run_cli("keys", "create", "--name", "a", "--team", "search")
    first_key = out.strip()
    _, out, _ = run_cli("keys", "create", "--name", "b", "--team", "search")
    second_key = out.strip()
    assert served.echo(first_key).status_code == 200
    refused = served.echo(second_key)  # the team's one request per minute is spent
    assert refused.status_code == 429 and "team search" in refused.json()["error"]["message"]
    status, _, err = run_cli("teams", "show", "nosuchteam")
    assert status == 1 and "404" in err


def test_cli_reports_errors_in_one_line(served: Served, run_cli, monkeypatch, capsys):
    status, _, err = run_cli("keys", "create", "--name", "x", "--expires", "3 fortnights")
    assert status == 2 and "duration" in err
    status, _, err = run_cli("keys", "revoke", "0123456789ab")
    assert status == 1 and "404" in err
    monkeypatch.delenv("TANDEM_MASTER_KEY")
    status, _, err = run_cli("keys", "list")
    assert status == 1 and "401" in err and "TANDEM_MASTER_KEY" in err
    assert cli(["keys", "list", "--url", "http://127.0.0.1:1"]) == 1  # nothing listens there
    assert "cannot reach tandem" in capsys.readouterr().err


def test_admin_api_needs_the_master_key(served: Served):
    created = httpx.post(
        f"{served.url}/admin/keys", json={"name": "carol"}, headers={"x-api-key": MASTER}, timeout=10
    )
    assert created.status_code == 201
    key = created.json()["key"]
    for headers, status, code in [
        ({}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer nope"}, 401, "invalid_api_key"),
        ({"Authorization": f"Bearer {key}"}, 403, "insufficient_permissions"),
    ]:
        response = httpx.get(f"{served.url}/admin/keys", headers=headers, timeout=10)
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
    invalid = httpx.post(
        f"{served.url}/admin/keys", json={"name": "x", "rpm": 0}, headers={"x-api-key": MASTER}, timeout=10
    )
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "rpm"


def test_admin_api_is_in_the_openapi_document(served: Served):
    document = httpx.get(f"{served.url}/openapi.json", timeout=10).json()
    assert {"/admin/keys", "/admin/keys/{key_ref}", "/admin/teams/{team}", "/admin/usage"} <= set(
        document["paths"]
    )
    assert {"KeyCreate", "KeyCreated", "KeyList", "Limits", "TeamInfo", "UsageReport", "UsageRow"} <= set(
        document["components"]["schemas"]
    )
    assert "delete" in document["paths"]["/admin/keys/{key_ref}"]
    assert "put" in document["paths"]["/admin/teams/{team}"]
