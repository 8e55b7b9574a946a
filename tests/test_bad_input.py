"""Careless or hostile input against a real server, both profiles: each gets a 4xx in its protocol's
envelope, never a 500, a retryable 503 that cannot succeed, or a model left in a state that breaks others."""

from __future__ import annotations

import json
import math

import httpx
import pytest

CHAT = [{"role": "user", "content": "Hi"}]


def _openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def _ollama_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return body["error"]


def _raw_post(server, path: str, text: str, **kwargs) -> httpx.Response:
    """A body as the client wrote it: JSON escapes such as \\ud800 go over the wire unchanged."""
    return httpx.post(f"{server.base_url}{path}", content=text.encode(), timeout=60,
                      headers={"content-type": "application/json"}, **kwargs)  # fmt: skip


@pytest.mark.parametrize("key", ["²", "1" * 5000, "١٢", "12 ", "+5"])
def test_logit_bias_keys_that_are_not_token_ids(server, key):
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 1, "logit_bias": {key: 1}}
    error = _openai_error(httpx.post(f"{server.v1}/chat/completions", json=body, timeout=60), 400)
    assert error["param"] == "logit_bias"
    completion = {"model": "tiny", "prompt": "x", "max_tokens": 1, "logit_bias": {key: 1}}
    _openai_error(httpx.post(f"{server.v1}/completions", json=completion, timeout=60), 400)


@pytest.mark.parametrize("surrogate", ["\\ud800", "\\udfff", "a\\ud83d", "\\ude00b"])
def test_a_lone_surrogate_is_refused(server, surrogate):
    chat = '{"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "%s"}]}'
    error = _openai_error(_raw_post(server, "/v1/chat/completions", chat % surrogate), 400)
    assert "surrogate" in error["message"] and error["code"] == "invalid_unicode"
    generate = '{"model": "tiny", "stream": false, "prompt": "%s", "options": {"num_predict": 1}}'
    assert "surrogate" in _ollama_error(_raw_post(server, "/api/generate", generate % surrogate), 400)
    ollama_chat = '{"model": "tiny", "stream": false, "messages": [{"role": "user", "content": "%s"}]}'
    _ollama_error(_raw_post(server, "/api/chat", ollama_chat % surrogate), 400)
    # the UTF-8 bytes of a surrogate, which Python's json module decodes (surrogatepass) as one
    raw = (chat % "x").encode().replace(b'"x"', b'"\xed\xa0\x80"')
    response = httpx.post(f"{server.v1}/chat/completions", content=raw, timeout=60,
                          headers={"content-type": "application/json"})  # fmt: skip
    _openai_error(response, 400)


def test_surrogate_pairs_and_escaped_backslashes_are_text(server):
    """An emoji escaped as a surrogate pair (json.dumps' default), a literal backslash before 'ud800', and
    Hangul, whose UTF-8 starts with the byte 0xED as a surrogate's would."""
    for content in ["\\ud83d\\ude00", "\\\\ud800", "한국어"]:
        chat = '{"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "%s"}]}'
        response = _raw_post(server, "/v1/chat/completions", chat % content)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("value", [1e30, 10**40, "99999999999h", -1])
def test_a_huge_keep_alive_means_forever_and_ps_still_answers(server, value):
    loaded = httpx.post(f"{server.base_url}/api/generate", json={"model": "tiny", "keep_alive": value})
    assert loaded.status_code == 200, loaded.text
    ps = httpx.get(f"{server.base_url}/api/ps")
    assert ps.status_code == 200, ps.text
    [model] = [m for m in ps.json()["models"] if m["name"] == "tiny:latest"]
    assert model["expires_at"] > "2100"  # kept loaded: Ollama shows a far-future expiry
    # a request without keep_alive gives the model its own default back
    assert httpx.post(f"{server.base_url}/api/generate", json={"model": "tiny"}).status_code == 200


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", '"nan"', '"inf"', "1e400"])
def test_keep_alive_that_is_not_a_duration_is_refused(server, text):
    body = f'{{"model": "tiny", "keep_alive": {text}}}'
    assert "keep_alive" in _ollama_error(_raw_post(server, "/api/generate", body), 400)
    chat = f'{{"model": "tiny", "messages": [], "keep_alive": {text}}}'
    _ollama_error(_raw_post(server, "/api/chat", chat), 400)
    embed = f'{{"model": "tiny", "input": "x", "keep_alive": {text}}}'
    assert _raw_post(server, "/api/embed", embed).status_code == 400
    assert httpx.get(f"{server.base_url}/api/ps").status_code == 200


def test_n_beyond_what_the_backend_can_hold_is_a_400(server):
    """The dev backend holds TANDEM_MAX_QUEUED_REQUESTS (64) waiting + `parallel` (4) running requests;
    n is capped at 128 for both."""
    response = httpx.post(f"{server.v1}/chat/completions", timeout=120,
                          json={"model": "tiny", "messages": CHAT, "max_tokens": 1, "n": 128})  # fmt: skip
    if response.status_code == 200:  # the paged engine's queue (max_waiting_requests 1024) holds them all
        assert len(response.json()["choices"]) == 128
        return
    error = _openai_error(response, 400)
    assert error["param"] == "n" and "at most 68" in error["message"]
    most = {"model": "tiny", "messages": CHAT, "max_tokens": 1, "n": 68}
    assert httpx.post(f"{server.v1}/chat/completions", json=most, timeout=120).status_code == 200


@pytest.mark.parametrize("schema", [{"$ref": "#"}, {"allOf": [{"$ref": "#"}]}, {"enum": []}])
def test_a_schema_that_admits_no_document_is_a_400(server, schema):
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 5, "response_format": response_format}
    error = _openai_error(httpx.post(f"{server.v1}/chat/completions", json=body, timeout=60), 400)
    assert error["param"] == "response_format"
    ollama = {
        "model": "tiny",
        "prompt": "x",
        "stream": False,
        "format": schema,
        "options": {"num_predict": 5},
    }
    _ollama_error(httpx.post(f"{server.base_url}/api/generate", json=ollama, timeout=60), 400)


def _chunks(total: int, size: int = 64 * 1024):
    yield b'{"model": "tiny", "prompt": "'
    for _ in range(total // size):
        yield b"a" * size
    yield b'"}'


@pytest.mark.parametrize("megabytes", [5, 50])
def test_a_chunked_body_over_the_limit_is_a_413(server, megabytes):
    """No Content-Length: the size limit counts the chunks as they arrive."""
    try:
        response = httpx.post(f"{server.v1}/completions", content=_chunks(megabytes * 2**20), timeout=60,
                              headers={"content-type": "application/json"})  # fmt: skip
    except httpx.TransportError as exc:  # the server may close the connection while the client still sends
        pytest.fail(f"the client got no answer: {exc!r}")
    assert "too large" in _openai_error(response, 413)["message"]
    ollama = httpx.post(f"{server.base_url}/api/generate", content=_chunks(5 * 2**20), timeout=60)
    assert "too large" in _ollama_error(ollama, 413)


def _model_names(server) -> list[str]:
    return [m["name"] for m in httpx.get(f"{server.base_url}/api/tags").json()["models"]]


def test_a_created_model_name_over_255_bytes_is_a_400(server):
    before = _model_names(server)
    for name in ["m" * 256, "a:" * 200]:
        response = httpx.post(f"{server.base_url}/api/create", json={"model": name, "from": "tiny"})
        assert "255" in _ollama_error(response, 400)
        copy = httpx.post(f"{server.base_url}/api/copy", json={"source": "tiny", "destination": name})
        _ollama_error(copy, 400)
    assert _model_names(server) == before  # nothing served without a record, nothing half-made


def test_json_numbers_python_accepts_but_json_does_not(server):
    """NaN and Infinity parse in Python's json module; no field may take them through to a backend."""
    for field in ["temperature", "top_p", "presence_penalty", "frequency_penalty"]:
        for value in [math.nan, math.inf]:
            body = json.dumps({"model": "tiny", "messages": CHAT, "max_tokens": 1, field: value})
            response = _raw_post(server, "/v1/chat/completions", body)
            assert response.status_code == 400, (field, value, response.text)
