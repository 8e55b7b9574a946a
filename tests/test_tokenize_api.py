"""POST /tokenize and /detokenize (vLLM's shapes) on both profiles: the counts chat and completions charge,
round trips, the chat template's rendering, and every bad input as a clear OpenAI-envelope error."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import model_entry, start_server

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours, please."},
]
_WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": _WEATHER}}]
NAMED_UNKNOWN = {"type": "function", "function": {"name": "not_a_tool"}}
TEXTS = ["Hello world!", "  two  spaces\n\ttab", "<|im_start|>user\nHi<|im_end|>\n", "émoji 🎉 ok", ""]


def _post(server, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=60, **kwargs)


def _ok(server, path: str, body: dict) -> dict:
    response = _post(server, path, body)
    assert response.status_code == 200, response.text
    return response.json()


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize("text", TEXTS)
def test_detokenize_inverts_tokenize(server, text):
    tokenized = _ok(server, "/tokenize", {"model": "tiny", "prompt": text})
    assert tokenized["count"] == len(tokenized["tokens"]) and "token_strs" not in tokenized
    assert _ok(server, "/detokenize", {"model": "tiny", "tokens": tokenized["tokens"]}) == {"prompt": text}


def test_prompt_count_is_what_completions_charge(server):
    prompt = "The quick brown fox jumps over the lazy dog."
    tokenized = _ok(server, "/tokenize", {"model": "tiny", "prompt": prompt})
    completion = server.openai().completions.create(model="tiny", prompt=prompt, max_tokens=1)
    assert tokenized["count"] == completion.usage.prompt_tokens
    assert tokenized["max_model_len"] == 4096  # the tiny model's trained context
    assert _ok(server, "/v1/tokenize", {"model": "default", "prompt": prompt}) == tokenized  # alias, /v1
    back = _ok(server, "/v1/detokenize", {"model": "default", "tokens": tokenized["tokens"]})
    assert back == {"prompt": prompt}


@pytest.mark.parametrize("tools", [None, TOOLS], ids=["plain", "tools"])
def test_messages_count_is_what_chat_charges(server, tools):
    extra = {"tools": tools} if tools else {}
    tokenized = _ok(server, "/tokenize", {"model": "tiny", "messages": MESSAGES, **extra})
    chat = server.openai().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1, **extra)
    assert tokenized["count"] == chat.usage.prompt_tokens
    rendered = _ok(server, "/detokenize", {"model": "tiny", "tokens": tokenized["tokens"]})["prompt"]
    assert rendered.startswith("<|im_start|>system\nYou are terse.") and rendered.endswith(
        "<|im_start|>assistant\n"
    )
    assert ("get_weather" in rendered) == bool(tools)  # the tiny template has no tool section: described


def test_generation_prompt_and_final_message_switches(server):
    body = {"model": "tiny", "messages": MESSAGES}
    full = _ok(server, "/tokenize", body)["tokens"]
    bare = _ok(server, "/tokenize", {**body, "add_generation_prompt": False})["tokens"]
    assert full[: len(bare)] == bare and len(bare) < len(full)
    opened = [*MESSAGES, {"role": "assistant", "content": "Red, green and"}]
    switches = {"add_generation_prompt": False, "continue_final_message": True}
    tokens = _ok(server, "/tokenize", {**body, "messages": opened, **switches})["tokens"]
    text = _ok(server, "/detokenize", {"model": "tiny", "tokens": tokens})["prompt"]
    assert text.endswith("<|im_start|>assistant\nRed, green and")


def test_token_strs_spell_the_prompt(server):
    prompt = "Tokens, one by one."
    tokenized = _ok(server, "/tokenize", {"model": "tiny", "prompt": prompt, "return_token_strs": True})
    assert len(tokenized["token_strs"]) == tokenized["count"] and "".join(tokenized["token_strs"]) == prompt


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi", "messages": MESSAGES}, "messages"),
        ({}, "prompt"),
        ({"messages": []}, "messages"),
        ({"prompt": "hi", "tools": TOOLS}, "tools"),
        ({"prompt": "hi", "add_generation_prompt": False}, "add_generation_prompt"),
        ({"messages": MESSAGES, "continue_final_message": True}, "continue_final_message"),
        ({"prompt": "hi", "chat_template_kwargs": {}}, "chat_template_kwargs"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": MESSAGES, "tools": TOOLS, "tool_choice": NAMED_UNKNOWN}, "tool_choice"),
    ],
)  # fmt: skip
def test_bad_tokenize_requests_are_400s_naming_the_field(server, body, param):
    assert _error(_post(server, "/tokenize", {"model": "tiny", **body}), 400)["param"] == param


@pytest.mark.parametrize("tokens", [[-1], [10**9], [2**70], [1, "x"]])
def test_detokenize_refuses_ids_outside_the_vocabulary(server, tokens):
    assert _error(_post(server, "/detokenize", {"model": "tiny", "tokens": tokens}), 400)["param"].startswith(
        "tokens"
    )


def test_unknown_model_is_a_404(server):
    for path, body in (("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [1]})):
        assert _error(_post(server, path, {"model": "nope", **body}), 404)["code"] == "model_not_found"


# ---- keys, allow-lists, limits and remote models -----------------------------------------------------------

MASTER = "sk-master-tokenize-0123456789"


@pytest.fixture(scope="module")
def guarded(tiny_llama, tmp_path_factory):
    """Access control on: a local model, a second one a key may not use, and a remote one (never called)."""
    entries = [
        {**model_entry(tiny_llama, "dev"), "preload": True},
        {**model_entry(tiny_llama, "dev"), "name": "secret", "aliases": []},
        {"name": "up", "backend": "remote", "remote": {"api_base": "http://127.0.0.1:9/v1", "model": "x"}},
    ]
    config = {"profile": "dev", "profiles": {"dev": {"models": entries}}}
    running = start_server(config, tmp_path_factory.mktemp("tokenize"), env={"TANDEM_MASTER_KEY": MASTER})
    yield running
    running.stop()


def _key(server, **fields) -> dict[str, str]:
    created = httpx.post(f"{server.base_url}/admin/keys", json={"name": "t", **fields},
                         headers={"Authorization": f"Bearer {MASTER}"})  # fmt: skip
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['key']}", "id": created.json()["id"]}


def test_keys_limits_and_usage_apply_without_charging_tokens(guarded):
    key = _key(guarded, models=["tiny", "up"], rpm=3)
    key_id = key.pop("id")
    assert _error(_post(guarded, "/tokenize", {"model": "tiny", "prompt": "hi"}), 401)
    assert _error(_post(guarded, "/tokenize", {"model": "secret", "prompt": "hi"}, headers=key), 404)
    first = _post(guarded, "/tokenize", {"model": "tiny", "prompt": "hi"}, headers=key)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "3"
    assert _post(guarded, "/detokenize", {"model": "tiny", "tokens": [1]}, headers=key).status_code == 200
    assert _post(guarded, "/tokenize", {"model": "tiny", "prompt": "hi"}, headers=key).status_code == 200
    assert _error(_post(guarded, "/tokenize", {"model": "tiny", "prompt": "hi"}, headers=key), 429)
    usage = httpx.get(f"{guarded.base_url}/admin/usage", params={"key": key_id},
                      headers={"Authorization": f"Bearer {MASTER}"}).json()["data"]  # fmt: skip
    assert [(row["model"], row["requests"], row["total_tokens"]) for row in usage] == [("tiny", 3, 0)]


def test_a_remote_model_has_no_tokenizer_here(guarded):
    master = {"Authorization": f"Bearer {MASTER}"}
    for path, body in (("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [1]})):
        error = _error(_post(guarded, path, {"model": "up", **body}, headers=master), 400)
        assert error["param"] == "model" and "remote" in error["message"]


def _served_ok(server) -> float:
    text = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {MASTER}"}).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tandem_requests_total"
        and sample.labels.get("model") == "tiny"
        and sample.labels.get("status_code") == "200"
    )


def test_tokenize_requests_are_counted_in_metrics(guarded):
    master = {"Authorization": f"Bearer {MASTER}"}
    before = _served_ok(guarded)
    for path, body in (("/tokenize", {"prompt": "count me"}), ("/detokenize", {"tokens": [1]})):
        assert _post(guarded, path, {"model": "tiny", **body}, headers=master).status_code == 200
    assert _served_ok(guarded) == before + 2


# ---- the real demo model, on both backends ----------------------------------------------------------------


def test_smollm2_tokenizes_alike_on_both_backends_and_round_trips(smollm2_gguf, tmp_path_factory):
    """SmolLM2's real vocabulary and chat template (with its own default system prompt): llama.cpp and the
    paged engine's GGUF tokenizer give the same ids, which detokenize back to the text."""
    engine = {"max_num_seqs": 2, "max_num_batched_tokens": 256, "cpu_kv_cache_gib": 0.02}
    common = {"path": str(smollm2_gguf), "preload": True, "context_length": 512}
    models = [
        {"name": "dev", "backend": "llamacpp", **common},
        {"name": "prod", "backend": "paged", "engine": engine, **common},
    ]
    running = start_server({"profiles": {"dev": {"models": models}}}, tmp_path_factory.mktemp("smollm2-tok"))
    try:
        for text in [*TEXTS, "def f(x):\n        return x  # indented\n", "日本語のテキスト"]:
            ids = [_ok(running, "/tokenize", {"model": m, "prompt": text})["tokens"] for m in ("dev", "prod")]
            assert ids[0] == ids[1]
            for m in ("dev", "prod"):
                assert _ok(running, "/detokenize", {"model": m, "tokens": ids[0]})["prompt"] == text
        question = [{"role": "user", "content": "What is the capital of France?"}]
        for m in ("dev", "prod"):
            tokenized = _ok(running, "/tokenize", {"model": m, "messages": question})
            chat = running.openai().chat.completions.create(model=m, messages=question, max_tokens=1)
            card = httpx.get(f"{running.v1}/models/{m}").json()  # the loaded model's context, as listed
            assert tokenized["count"] == chat.usage.prompt_tokens
            assert tokenized["max_model_len"] == card["context_length"] <= 512
            rendered = _ok(running, "/detokenize", {"model": m, "tokens": tokenized["tokens"]})["prompt"]
            assert rendered.startswith("<|im_start|>system\n") and "capital of France?<|im_end|>" in rendered
    finally:
        running.stop()
