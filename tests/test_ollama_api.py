"""Ollama's native API, driven by the official `ollama` Python client against a real server."""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import pytest


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=60)


def test_version_and_tags(client, server):
    assert httpx.get(f"{server.base_url}/api/version").json()["version"]
    names = [m.model for m in client.list().models]
    assert names == ["tiny:latest", "default:latest"]
    model = client.list().models[0]
    assert model.size > 0 and model.digest and model.details.family == "llama"


def test_show_and_ps(client):
    shown = client.show("tiny")
    assert "FROM" in shown.modelfile
    assert "<|im_start|>" in shown.template
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "completion" in shown.capabilities
    client.generate(model="tiny", prompt="")  # load it, if no earlier test has
    running = client.ps().models
    assert [m.model for m in running] == ["tiny:latest"]


def test_chat_non_streaming_with_timings(client):
    response = client.chat(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        options={"num_predict": 6, "temperature": 0},
    )
    assert response.done and response.done_reason in ("stop", "length")
    assert response.message.role == "assistant"
    assert response.prompt_eval_count > 0
    assert 0 < response.eval_count <= 6
    assert response.total_duration >= response.prompt_eval_duration + response.eval_duration > 0


def test_chat_streaming_matches_non_streaming(client):
    kwargs = dict(model="tiny:latest", messages=[{"role": "user", "content": "hi"}],
                  options={"num_predict": 8, "temperature": 0})  # fmt: skip
    whole = client.chat(**kwargs)
    parts = list(client.chat(stream=True, **kwargs))
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].eval_count == whole.eval_count


def test_generate_with_system_context_and_raw(client):
    first = client.generate(model="tiny", prompt="Once", options={"num_predict": 4, "temperature": 0})
    assert first.done and first.context
    follow = client.generate(
        model="tiny", prompt="more", context=first.context, options={"num_predict": 3, "temperature": 0}
    )
    assert follow.prompt_eval_count > len(first.context)
    raw = client.generate(model="tiny", prompt="plain text", raw=True, options={"num_predict": 3})
    assert raw.context is None and raw.eval_count == 3
    system = client.generate(model="tiny", prompt="x", system="Be brief.", options={"num_predict": 2})
    assert system.prompt_eval_count > first.prompt_eval_count - 2


def test_seed_reproducible(client):
    def sample() -> str:
        options = {"num_predict": 12, "temperature": 1.0, "seed": 42}
        return client.generate(model="tiny", prompt="Tell", options=options).response

    assert sample() == sample()


def test_empty_prompt_only_loads(client):
    loaded = client.generate(model="tiny", prompt="")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""


def test_errors_in_ollama_envelope(client, server):
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="missing", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404 and "not found" in caught.value.error
    bad = httpx.post(f"{server.base_url}/api/chat", json={"model": "tiny", "messages": "nope"})
    assert bad.status_code == 400 and set(bad.json()) == {"error"}
    malformed = httpx.post(f"{server.base_url}/api/generate", content=b"{oops")
    assert malformed.status_code == 400 and set(malformed.json()) == {"error"}
    fmt = httpx.post(
        f"{server.base_url}/api/generate", json={"model": "tiny", "prompt": "x", "format": "yaml"}
    )
    assert fmt.status_code == 400 and "format" in fmt.json()["error"]
    options = {"model": "tiny", "prompt": "x", "options": {"temperature": "hot"}}
    assert httpx.post(f"{server.base_url}/api/generate", json=options).status_code == 400


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad"]},
    },
    "required": ["name", "age", "mood"],
}


def test_format_json_and_schema(client):
    finished = []
    for seed in range(8):
        answer = client.generate(model="tiny", prompt="Describe a cat", format="json",
                                 options={"num_predict": 300, "seed": seed, "temperature": 1.0})  # fmt: skip
        if answer.done_reason == "stop":
            finished.append(json.loads(answer.response))
    assert finished and all(isinstance(document, dict) for document in finished)
    strict = client.chat(model="tiny", messages=[{"role": "user", "content": "Who?"}], format=PERSON,
                         options={"num_predict": 400, "seed": 7})  # fmt: skip
    assert strict.done_reason == "stop"
    jsonschema.validate(json.loads(strict.message.content), PERSON)
