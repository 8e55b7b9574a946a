"""The error contract at the backend seam: whatever a backend refuses leaves in its protocol's envelope with
a proper status (never a 500), and a request needing a capability its backend lacks is refused, not ignored.

The gateway's request path runs in-process on a small scripted backend (a backend that refuses at will
cannot be made from real parts); the missing-chat-template case runs the real paged engine on a server.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from backends.base import (
    Backend,
    BackendCapabilities,
    BackendError,
    BackendHealth,
    BackendState,
    BackendUnavailableError,
    FinishReason,
    GenerationChunk,
    GenerationFailedError,
    GenerationRequest,
    Prompt,
    QueueFullError,
    RenderOptions,
)
from backends.conversation import Conversation
from backends.remote.upstream import UpstreamError
from backends.stats import BackendStats
from backends.structured import InvalidStructuredOutputError
from gateway.app import create_app
from gateway.auth import open_access
from gateway.auth.settings import AuthSettings
from gateway.config import ModelSpec, Profile
from gateway.errors import as_api_error
from gateway.model_store import ModelStore
from gateway.registry import ManagedModel, ModelManager
from gateway.routing import Router
from gateway.settings import Settings
from tests.conftest import model_entry, start_server

EVERYTHING = BackendCapabilities(
    logprobs=True, logit_bias=True, ignore_eos=True, min_tokens=True, structured_output=True, embeddings=True
)


class _ScriptedStream:
    """Yields the backend's scripted chunks, then raises its scripted mid-stream error, if any."""

    def __init__(self, chunks: list[GenerationChunk], error: BackendError | None) -> None:
        self._chunks = iter(chunks)
        self._error = error

    def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        return self

    async def __anext__(self) -> GenerationChunk:
        chunk = next(self._chunks, None)
        if chunk is not None:
            return chunk
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise StopAsyncIteration

    def abort(self) -> None:
        self._chunks = iter([])

    async def aclose(self) -> None:
        self.abort()


class ScriptedBackend:
    """A backend whose refusals the test sets: at admission (`refuse`) or after one chunk (`fail`)."""

    kind = "scripted"

    def __init__(self, capabilities: BackendCapabilities) -> None:
        self.capabilities = capabilities
        self.refuse: BackendError | None = None
        self.fail: BackendError | None = None

    @property
    def context_length(self) -> int:
        return 256

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def max_requests(self) -> int:
        return 16

    @property
    def health(self) -> BackendHealth:
        return BackendHealth(BackendState.READY)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode())

    def detokenize(self, token_ids: list[int]) -> str:
        return bytes(token_ids).decode(errors="replace")

    def render_prompt(self, conversation: Conversation, options: RenderOptions) -> Prompt:
        text = "".join(f"{m.role}: {m.text}\n" for m in conversation.messages) + "assistant: "
        return Prompt(self.tokenize(text), text)

    def generate(self, request: GenerationRequest) -> _ScriptedStream:
        if self.refuse is not None:
            raise self.refuse
        if self.fail is not None:
            return _ScriptedStream([GenerationChunk("Hel", [72, 101, 108])], self.fail)
        return _ScriptedStream([GenerationChunk("Hello", [72, 101, 108, 108, 111], FinishReason.STOP)], None)

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        return [[1.0, 0.0] for _ in inputs]

    def stats(self) -> BackendStats:
        return BackendStats(running=0, waiting=0)

    async def aclose(self) -> None:
        pass


@contextmanager
def serving(backend: ScriptedBackend, tmp_path: Path, model_file: Path) -> Iterator[TestClient]:
    """The whole app in-process, its one model `m` (files: `model_file`, for listings) served by `backend`."""
    assert isinstance(backend, Backend)  # the stand-in has everything the gateway may call on a backend
    spec = ModelSpec(name="m", backend="llamacpp", path=str(model_file))
    manager = ModelManager(
        [ManagedModel(spec, model_file, None)],
        loader=lambda _: backend,
        max_loaded=1,
        memory_budget_bytes=2**40,
    )
    access = asyncio.run(open_access(AuthSettings()))
    settings = Settings(home=tmp_path / "home")
    app = create_app(settings, manager, Router(Profile(models=[spec]), manager), ModelStore(tmp_path), access)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
OLLAMA_CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def _openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _ollama_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    return body["error"]


# ---- every kind of backend refusal, mapped -----------------------------------------------------------------


INVALID = "invalid_request_error"


@pytest.mark.parametrize(
    ("error", "status", "kind", "code"),
    [
        (BackendError("request id 'x' is already in use"), 400, INVALID, "invalid_request"),
        (InvalidStructuredOutputError("the schema must be a JSON object"), 400, INVALID, None),
        (UpstreamError(404, "no model 'gpt-x'", "model_not_found"), 404, INVALID, "model_not_found"),
        (UpstreamError(502, "upstream answered garbage"), 502, "server_error", None),
        (QueueFullError("m", retry_after_s=7), 503, "server_overloaded", "queue_full"),
        (BackendUnavailableError("model 'm' is shutting down"), 503, "server_error", "backend_unavailable"),
        (GenerationFailedError("generation failed: boom"), 500, "server_error", "generation_failed"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_every_backend_error_has_its_protocol_error(error, status, kind, code):
    mapped = as_api_error(error)
    assert (mapped.status, mapped.body.type, mapped.body.code) == (status, kind, code)
    assert mapped.body.message == str(error)
    assert mapped.headers == ({"Retry-After": "7"} if isinstance(error, QueueFullError) else {})


def test_the_paged_engines_refusals_are_the_requests_fault():
    pytest.importorskip("torch")
    from backends.paged.engine import RequestRejectedError

    mapped = as_api_error(RequestRejectedError("the prompt is empty"))
    assert (mapped.status, mapped.body.type) == (400, "invalid_request_error")


# ---- through the app: refused at admission, failed mid-stream ---------------------------------------------


def test_a_refusal_at_admission_is_a_400_in_each_protocols_envelope(tmp_path, tiny_llama):
    backend = ScriptedBackend(EVERYTHING)
    backend.refuse = BackendError("request id 'r-0' is already in use")
    with serving(backend, tmp_path, tiny_llama.gguf_path) as client:
        for stream in (False, True):  # refused before the response starts: a status code even when streaming
            error = _openai_error(client.post("/v1/chat/completions", json={**CHAT, "stream": stream}), 400)
            assert error["message"] == "request id 'r-0' is already in use"
            assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_request")
        _openai_error(client.post("/v1/completions", json={"model": "m", "prompt": "hi"}), 400)
        assert "already in use" in _ollama_error(client.post("/api/chat", json=OLLAMA_CHAT), 400)
        generate = {"model": "m", "prompt": "hi", "stream": True}
        assert "already in use" in _ollama_error(client.post("/api/generate", json=generate), 400)
        backend.refuse = QueueFullError("m", retry_after_s=3)
        response = client.post("/v1/chat/completions", json=CHAT)
        assert _openai_error(response, 503)["code"] == "queue_full"
        assert response.headers["retry-after"] == "3"


def test_a_failure_mid_stream_is_an_error_event_in_the_stream(tmp_path, tiny_llama):
    backend = ScriptedBackend(EVERYTHING)
    backend.fail = BackendError("the grammar matcher refused token 7")
    with serving(backend, tmp_path, tiny_llama.gguf_path) as client:
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            assert response.status_code == 200
            events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
        error = json.loads(events[-1])["error"]
        assert error["message"] == "the grammar matcher refused token 7"
        assert error["type"] == "invalid_request_error"  # the request's fault, as without streaming
        assert '"Hel"' in events[-2]
        with client.stream("POST", "/api/chat", json={**OLLAMA_CHAT, "stream": True}) as response:
            lines = [json.loads(line) for line in response.iter_lines() if line]
        assert lines[-1] == {"error": "the grammar matcher refused token 7"}
        # without streaming, the same failure has its status code
        error = _openai_error(client.post("/v1/chat/completions", json=CHAT), 400)
        assert error["message"] == "the grammar matcher refused token 7"
        assert "refused token 7" in _ollama_error(client.post("/api/chat", json=OLLAMA_CHAT), 400)


# ---- capabilities: what the backend lacks is refused, never ignored ----------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"ignore_eos": True}, "ignore_eos"),
        ({"min_tokens": 2}, "min_tokens"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_a_parameter_the_backend_cannot_honour_is_refused(tmp_path, tiny_llama, extra, param):
    with serving(ScriptedBackend(BackendCapabilities()), tmp_path, tiny_llama.gguf_path) as client:
        error = _openai_error(client.post("/v1/chat/completions", json={**CHAT, **extra}), 400)
        assert (error["param"], error["code"]) == (param, "unsupported_parameter")
        assert "backend 'scripted'" in error["message"]
    with serving(ScriptedBackend(EVERYTHING), tmp_path, tiny_llama.gguf_path) as client:
        assert client.post("/v1/chat/completions", json={**CHAT, **extra}).status_code == 200


def test_ollama_format_needs_structured_output(tmp_path, tiny_llama):
    with serving(ScriptedBackend(BackendCapabilities()), tmp_path, tiny_llama.gguf_path) as client:
        message = _ollama_error(client.post("/api/chat", json={**OLLAMA_CHAT, "format": "json"}), 400)
        assert "not supported by backend 'scripted'" in message


def test_embeddings_follow_the_backends_capabilities(tmp_path, tiny_llama):
    with serving(ScriptedBackend(BackendCapabilities()), tmp_path, tiny_llama.gguf_path) as client:
        error = _openai_error(client.post("/v1/embeddings", json={"model": "m", "input": "hi"}), 400)
        assert "does not support embeddings" in error["message"]
        response = client.post("/api/embed", json={"model": "m", "input": "x"})
        assert "does not support embeddings" in _ollama_error(response, 400)
        assert client.post("/api/show", json={"model": "m"}).json()["capabilities"] == ["completion"]
    with serving(ScriptedBackend(EVERYTHING), tmp_path, tiny_llama.gguf_path) as client:
        assert client.post("/v1/embeddings", json={"model": "m", "input": "hi"}).status_code == 200
        assert "embedding" in client.post("/api/show", json={"model": "m"}).json()["capabilities"]


# ---- a paged model without a chat template (the real engine, on a real server) -----------------------------


@pytest.fixture(scope="module")
def templateless_paged_server(tiny_llama, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("templateless") / "hf"
    shutil.copytree(tiny_llama.hf_dir, checkpoint)
    (checkpoint / "chat_template.jinja").unlink(missing_ok=True)
    config_path = checkpoint / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    del tokenizer_config["chat_template"]
    config_path.write_text(json.dumps(tokenizer_config))
    entry = {**model_entry(tiny_llama, "prod"), "path": str(checkpoint)}
    server = start_server(
        {"profile": "prod", "profiles": {"prod": {"models": [entry]}}}, tmp_path_factory.mktemp("server")
    )
    yield server
    server.stop()


def test_a_paged_model_without_a_chat_template_refuses_chat_with_a_400(templateless_paged_server):
    server = templateless_paged_server
    response = httpx.post(f"{server.v1}/chat/completions", json={**CHAT, "model": "tiny"}, timeout=60)
    error = _openai_error(response, 400)
    assert "no chat template" in error["message"] and error["param"] == "messages"
    response = httpx.post(f"{server.base_url}/api/chat", json={**OLLAMA_CHAT, "model": "tiny"}, timeout=60)
    assert "no chat template" in _ollama_error(response, 400)
    completion = {"model": "tiny", "prompt": "hello", "max_tokens": 3}
    assert httpx.post(f"{server.v1}/completions", json=completion, timeout=60).status_code == 200
