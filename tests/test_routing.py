"""Routing rules: remote upstreams through litellm, deployments and strategies, fallbacks, cooldowns."""

from __future__ import annotations

import random
import time
from collections import Counter

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import parse_config
from gateway.routing import Router
from tests.conftest import model_entry, start_server

CHAT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def upstream(tiny_llama, tmp_path_factory):
    """A real OpenAI-compatible server to route to: another tandem, on the dev profile."""
    entry = {**model_entry(tiny_llama, "dev"), "aliases": ["upstream-tiny"], "preload": True}
    server = start_server({"profiles": {"dev": {"models": [entry]}}}, tmp_path_factory.mktemp("upstream"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mortal(tiny_llama, tmp_path_factory):
    """An upstream that one test kills."""
    entry = {**model_entry(tiny_llama, "dev"), "preload": True}
    server = start_server({"profiles": {"dev": {"models": [entry]}}}, tmp_path_factory.mktemp("mortal"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(upstream, mortal, tiny_llama, tmp_path_factory):
    local = model_entry(tiny_llama, "dev")
    models = [
        {**local, "preload": True},
        {**local, "name": "tiny2", "aliases": [], "preload": True},
        {**local, "name": "short", "aliases": [], "context_length": 64, "fallbacks": ["tiny"]},
        {"name": "up", "backend": "remote", "remote": {"api_base": upstream.v1, "model": "tiny"}},
        {"name": "up-litellm", "backend": "remote",
         "remote": {"api_base": upstream.v1, "model": "tiny", "client": "litellm"}},
        {"name": "upstream-*", "backend": "remote", "remote": {"api_base": upstream.v1}},
        {"name": "dead", "backend": "remote", "remote": {"api_base": "http://127.0.0.1:9/v1"},
         "fallbacks": ["tiny"], "cooldown_s": 60, "timeout_s": 10},
        {"name": "split", "deployments": [{"model": "tiny", "weight": 1}, {"model": "tiny2", "weight": 1}]},
        {"name": "pinned", "deployments": [{"model": "tiny", "weight": 0}, {"model": "tiny2", "weight": 1}]},
        {"name": "busy", "strategy": "least-busy", "deployments": [{"model": "tiny"}, {"model": "tiny2"}]},
        {"name": "mortal", "backend": "remote", "remote": {"api_base": mortal.v1, "model": "tiny"},
         "fallbacks": ["tiny"], "cooldown_s": 2},
    ]  # fmt: skip
    server = start_server({"profiles": {"dev": {"models": models}}}, tmp_path_factory.mktemp("gateway"))
    yield server
    server.stop()


def _chat(server, model: str, max_tokens: int = 8, **kwargs):
    raw = server.openai().chat.completions.with_raw_response.create(
        model=model, messages=CHAT, max_tokens=max_tokens, temperature=0, **kwargs
    )
    return raw.headers, raw.parse()


def _metrics(server) -> dict:
    text = httpx.get(f"{server.base_url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


@pytest.mark.parametrize("name", ["up", "up-litellm"])  # direct pass-through, and through litellm
def test_remote_upstream_passes_answers_through(gateway, upstream, name):
    headers, routed = _chat(gateway, name)
    assert headers["x-tandem-backend"] == "remote" and headers["x-tandem-deployment"] == name
    direct = upstream.openai().chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=8, temperature=0
    )
    assert routed.choices[0].message.content == direct.choices[0].message.content
    assert routed.usage.completion_tokens == direct.usage.completion_tokens

    stream = gateway.openai().chat.completions.create(
        model=name, messages=CHAT, max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == direct.choices[0].message.content
    )
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage: none passed through
    options = {"include_usage": True}
    with_usage = list(gateway.openai().chat.completions.create(
        model=name, messages=CHAT, max_tokens=8, stream=True, stream_options=options))  # fmt: skip
    assert with_usage[-1].usage.completion_tokens == 8

    text = gateway.openai().completions.create(model=name, prompt="Once", max_tokens=5, temperature=0)
    assert text.choices[0].text == upstream.openai().completions.create(
        model="tiny", prompt="Once", max_tokens=5, temperature=0).choices[0].text  # fmt: skip
    vectors = gateway.openai().embeddings.create(model=name, input=["a", "b"])
    assert len(vectors.data) == 2


def test_glob_names_forward_the_requested_model(gateway):
    headers, answer = _chat(gateway, "upstream-tiny")
    assert headers["x-tandem-deployment"] == "upstream-*" and answer.choices
    with pytest.raises(openai.NotFoundError) as caught:  # the upstream's own 404, in our envelope
        _chat(gateway, "upstream-missing")
    assert "upstream-missing" in caught.value.body["message"]


def test_unreachable_upstream_falls_back_and_cools_down(gateway):
    for _ in range(2):
        headers, answer = _chat(gateway, "dead")
        assert headers["x-tandem-deployment"] == "tiny" and answer.choices
    metrics = _metrics(gateway)
    # the second request skipped the cooling deployment: one failure, two fallbacks
    assert metrics[("tandem_upstream_errors_total", (("deployment", "dead"), ("model", "dead")))] == 1
    assert metrics[("tandem_fallbacks_total", (("fallback", "tiny"), ("model", "dead")))] == 2


def test_upstream_killed_mid_test_falls_back_then_is_retried_after_its_cooldown(gateway, mortal):
    failures = ("tandem_upstream_errors_total", (("deployment", "mortal"), ("model", "mortal")))
    assert _chat(gateway, "mortal")[0]["x-tandem-deployment"] == "mortal"
    mortal.stop()
    assert _chat(gateway, "mortal")[0]["x-tandem-deployment"] == "tiny"
    assert _metrics(gateway)[failures] == 1
    assert _chat(gateway, "mortal")[0]["x-tandem-deployment"] == "tiny"
    assert _metrics(gateway)[failures] == 1  # cooling down: not even tried
    time.sleep(2.2)
    assert _chat(gateway, "mortal")[0]["x-tandem-deployment"] == "tiny"
    assert _metrics(gateway)[failures] == 2  # tried again once the cooldown was over


def test_context_overflow_falls_back_to_a_bigger_model(gateway):
    long_prompt = "many words here " * 40
    raw = gateway.openai().completions.with_raw_response.create(
        model="short", prompt=long_prompt, max_tokens=4
    )
    assert raw.headers["x-tandem-deployment"] == "tiny" and raw.parse().usage.prompt_tokens > 64
    assert (
        _metrics(gateway).get(("tandem_upstream_errors_total", (("deployment", "short"), ("model", "short"))))
        is None
    )


def test_weighted_routes(gateway):
    seen = Counter(_chat(gateway, "split", max_tokens=1)[0]["x-tandem-deployment"] for _ in range(24))
    assert set(seen) == {"tiny", "tiny2"}
    assert {_chat(gateway, "pinned", max_tokens=1)[0]["x-tandem-deployment"] for _ in range(6)} == {"tiny2"}


def test_least_busy_avoids_the_deployment_holding_a_long_stream(gateway):
    long = {"model": "busy", "prompt": "on and on", "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{gateway.v1}/completions", json=long) as held,
    ):
        lines = held.iter_lines()
        next(lines)
        busy = held.headers["x-tandem-deployment"]
        for _ in range(3):
            assert _chat(gateway, "busy", max_tokens=1)[0]["x-tandem-deployment"] != busy


def test_models_list_shows_routes_and_upstreams(gateway):
    cards = {m["id"]: m["backend"] for m in httpx.get(f"{gateway.v1}/models").json()["data"]}
    assert cards["up"] == "remote" and cards["split"] == "router" and cards["tiny"] == "llamacpp"
    assert "upstream-*" not in cards


_TIME = {"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}
_TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": _TIME}}]


@pytest.mark.parametrize("name", ["up", "up-litellm"])
def test_tool_calls_and_results_pass_through_to_the_upstream(gateway, upstream, name):
    named = {"type": "function", "function": {"name": "get_time"}}
    kwargs = {"messages": CHAT, "max_tokens": 200, "temperature": 0, "tools": _TOOLS, "tool_choice": named}
    routed = gateway.openai().chat.completions.create(model=name, **kwargs).choices[0]
    direct = upstream.openai().chat.completions.create(model="tiny", **kwargs).choices[0]
    assert routed.finish_reason == "tool_calls"
    assert routed.message.tool_calls[0].function.arguments == direct.message.tool_calls[0].function.arguments
    call = routed.message.tool_calls[0].model_dump()
    tool = {"role": "tool", "tool_call_id": call["id"]}
    history = [*CHAT, {"role": "assistant", "tool_calls": [call]}, tool]
    sizes = [
        gateway.openai()
        .chat.completions.create(
            model=name, messages=[*history[:2], {**history[2], "content": result}], max_tokens=1, tools=_TOOLS
        )
        .usage.prompt_tokens
        for result in ("1", "one two three four five six")
    ]
    assert sizes[1] > sizes[0]  # the tool result reached the upstream's prompt


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_chat_is_translated_for_a_remote_upstream(gateway, upstream, stream):
    import ollama

    shape = {"type": "object", "properties": {"name": {"const": "get_time"}, "arguments": _TIME},
             "required": ["name", "arguments"]}  # fmt: skip
    client = ollama.Client(host=gateway.base_url)
    options = {"temperature": 0, "num_predict": 200}
    direct = client.chat(model="tiny", messages=CHAT, tools=_TOOLS, format=shape, options=options)
    answer = client.chat(model="up", messages=CHAT, tools=_TOOLS, format=shape, options=options,
                         stream=stream)  # fmt: skip
    parts = list(answer) if stream else [answer]
    calls = [c for part in parts for c in part.message.tool_calls or ()]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        (c.function.name, dict(c.function.arguments)) for c in direct.message.tool_calls
    ]
    assert parts[-1].done and parts[-1].eval_count > 0
    plain = client.chat(model="up", messages=CHAT, options={"temperature": 0, "num_predict": 8})
    assert (
        plain.message.content
        == client.chat(
            model="tiny", messages=CHAT, options={"temperature": 0, "num_predict": 8}
        ).message.content
    )


# ---- the router's choices, without servers --------------------------------------------------------------


class _Models:
    """The part of ModelManager the router reads: local models by name."""

    def __init__(self, names):
        self._models = {
            name: type("Local", (), {"spec": None, "in_use": 0, "names": [name]})() for name in names
        }

    def resolve(self, name):
        return self._models.get(name)

    def __iter__(self):
        return iter(())


def _router(models: list[dict], team_overrides: dict | None = None) -> Router:
    profile = parse_config(
        {"profiles": {"p": {"models": models, "team_overrides": team_overrides or {}}}}, "t"
    )
    router = Router(profile.profiles["p"], _Models([m["name"] for m in models]), rng=random.Random(0))
    for spec in profile.profiles["p"].models:
        local = router.models.resolve(spec.name)
        if local is not None:
            local.spec = spec
    return router


LOCALS = [{"name": n, "backend": "llamacpp", "path": "/m.gguf"} for n in ("a", "b", "c")]


def test_latency_strategy_explores_then_prefers_the_fastest():
    deployments = [{"model": "a"}, {"model": "b"}, {"model": "c"}]
    router = _router([*LOCALS, {"name": "fast", "strategy": "latency", "deployments": deployments}])
    route = router.lookup("fast")
    router.succeeded(router.deployment(router.lookup("a")), 0.5)
    router.succeeded(router.deployment(router.lookup("b")), 0.1)
    assert [a.deployment.name for a in router.plan(route)][:1] == ["c"]  # never measured: tried first
    router.succeeded(router.deployment(router.lookup("c")), 0.9)
    assert router.plan(route)[0].deployment.name == "b"


def test_retries_then_fallbacks_in_order():
    router = _router(
        [*LOCALS, {"name": "r", "deployments": [{"model": "a"}], "retries": 2, "fallbacks": ["c"]}]
    )
    plan = router.plan(router.lookup("r"))
    assert [(a.deployment.name, a.fallback_of) for a in plan] == [
        ("a", None),
        ("a", None),
        ("a", None),
        ("c", "r"),
    ]


def test_team_overrides():
    router = _router(LOCALS, team_overrides={"research": {"a": "b"}})
    assert router.lookup("a", team="research").name == "b"
    assert router.lookup("a", team="sales").name == "a"
    assert router.lookup("a").name == "a"


def test_routing_config_errors():
    from gateway.config import ConfigError

    for models, message in [
        ([{"name": "x", "deployments": [{"model": "nope"}]}], "routes to 'nope', which is not defined"),
        ([{"name": "x", "backend": "remote"}], "backend 'remote' and a `remote:` section"),
        (
            [{"name": "x*", "backend": "llamacpp", "path": "/m"}],
            "only remote models and routes may have a glob",
        ),
        ([{"name": "x"}], "give either `backend` or `deployments`"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("`", "`")):
            parse_config({"profiles": {"p": {"models": models}}}, "t")
