"""Ollama's /api/generate for a remote (OpenAI-compatible) upstream: prompt, system, format and options become
the upstream's chat request, its answer Ollama's generate shape; raw prompts and token contexts, which only a
local model can honour, are a 400 naming them."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from tests.conftest import model_entry, start_server

MASTER = "sk-master-remote-generate-0123456789"
AUTH = {"Authorization": f"Bearer {MASTER}"}
SYSTEM, PROMPT = "You are terse.", "Say something."
OPTIONS = {"temperature": 0, "num_predict": 8}
_SHAPE = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@pytest.fixture(scope="module")
def upstream(tiny_llama, tmp_path_factory):
    """A real OpenAI-compatible server to route to: another tandem, on the dev profile."""
    entry = {**model_entry(tiny_llama, "dev"), "preload": True}
    server = start_server({"profiles": {"dev": {"models": [entry]}}}, tmp_path_factory.mktemp("upstream"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(upstream, tiny_llama, tmp_path_factory):
    models = [
        model_entry(tiny_llama, "dev"),  # local, loaded on first use
        {"name": "up", "backend": "remote", "remote": {"api_base": upstream.v1, "model": "tiny"}},
        {"name": "up-litellm", "backend": "remote",
         "remote": {"api_base": upstream.v1, "model": "tiny", "client": "litellm"}},
    ]  # fmt: skip
    env = {"TANDEM_MASTER_KEY": MASTER, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    server = start_server({"profiles": {"dev": {"models": models}}}, tmp_path_factory.mktemp("gw"), env=env)
    yield server
    server.stop()


def _direct(upstream, **kwargs):
    """The upstream's own chat answer to what a generate request means."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    return upstream.openai().chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=OPTIONS["num_predict"], **kwargs
    )


def _usage(gateway, model: str) -> tuple[int, int, int]:
    rows = httpx.get(f"{gateway.base_url}/admin/usage", params={"key": "master"}, headers=AUTH).json()["data"]
    row = next((r for r in rows if r["model"] == model), None)
    return (0, 0, 0) if row is None else (row["requests"], row["prompt_tokens"], row["completion_tokens"])


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("name", ["up", "up-litellm"])  # direct pass-through, and through litellm
def test_generate_is_the_upstreams_chat_of_system_and_prompt(gateway, upstream, name, stream):
    client = ollama.Client(host=gateway.base_url, headers=AUTH)
    before = _usage(gateway, name)
    answer = client.generate(model=name, prompt=PROMPT, system=SYSTEM, options=OPTIONS, stream=stream)
    parts = list(answer) if stream else [answer]
    direct = _direct(upstream)
    assert "".join(p.response for p in parts) == direct.choices[0].message.content
    if stream:
        assert len(parts) > 1
    final = parts[-1]
    assert final.done and final.done_reason == direct.choices[0].finish_reason == "length"
    assert (final.prompt_eval_count, final.eval_count) == (
        direct.usage.prompt_tokens,
        direct.usage.completion_tokens,
    )
    assert final.context is None  # no token ids of the upstream's to give back
    requests, prompt, completion = (a - b for a, b in zip(_usage(gateway, name), before, strict=True))
    assert (requests, prompt, completion) == (1, final.prompt_eval_count, final.eval_count)


def test_format_becomes_the_upstreams_response_format(gateway, upstream):
    client = ollama.Client(host=gateway.base_url, headers=AUTH)
    options = {"temperature": 0, "num_predict": 12}
    answer = client.generate(model="up", prompt=PROMPT, system=SYSTEM, format=_SHAPE, options=options)
    schema = {"type": "json_schema", "json_schema": {"name": "format", "schema": _SHAPE}}
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    direct = upstream.openai().chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=12, response_format=schema
    )
    assert answer.response == direct.choices[0].message.content
    plain = client.generate(model="up", prompt=PROMPT, system=SYSTEM, options=options)
    assert plain.response != answer.response  # the format reached the upstream's sampler


def test_without_a_system_prompt_only_the_prompt_is_sent(gateway, upstream):
    body = {"model": "up", "prompt": PROMPT, "options": OPTIONS, "stream": False}
    answer = httpx.post(f"{gateway.base_url}/api/generate", json=body, headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text
    direct = upstream.openai().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=8
    )
    assert answer.json()["response"] == direct.choices[0].message.content
    assert answer.json()["prompt_eval_count"] == direct.usage.prompt_tokens


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"raw": True}, "raw"),
        ({"context": [1, 2, 3]}, "context"),
        ({"template": "{{ .Prompt }}"}, "template"),
        ({"think": True}, "think"),
        ({"suffix": "end"}, "suffix"),
    ],
)
def test_what_only_a_local_model_can_honour_is_a_400_naming_it(gateway, extra, field):
    body = {"model": "up", "prompt": PROMPT, "stream": False, **extra}
    before = _usage(gateway, "up")
    response = httpx.post(f"{gateway.base_url}/api/generate", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 400 and set(response.json()) == {"error"}
    assert field in response.json()["error"]
    assert _usage(gateway, "up") == before  # refused before the upstream was asked


def test_images_are_passed_on_to_the_upstream(gateway):
    """The upstream (a tandem with a text-only model) refuses them itself: they reached it, not dropped."""
    body = {"model": "up", "prompt": PROMPT, "images": ["iVBORw0KGgo="], "stream": False}
    response = httpx.post(f"{gateway.base_url}/api/generate", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 400, response.text
    assert "does not accept images" in response.json()["error"]  # the upstream's words, not the gateway's


def test_images_to_a_local_model_are_still_refused(gateway):
    body = {"model": "tiny", "prompt": PROMPT, "images": ["iVBORw0KGgo="], "stream": False}
    response = httpx.post(f"{gateway.base_url}/api/generate", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 400 and response.json() == {
        "error": "model 'tiny' does not support images"
    }


def test_a_streamed_generate_ends_with_one_final_line(gateway):
    body = {"model": "up", "prompt": PROMPT, "options": OPTIONS}
    with httpx.stream("POST", f"{gateway.base_url}/api/generate", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert all(set(line) >= {"model", "created_at", "response", "done"} for line in lines)
    assert lines[-1]["eval_count"] == 8 and lines[-1]["total_duration"] > 0
