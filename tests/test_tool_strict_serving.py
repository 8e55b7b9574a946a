"""Strict functions under tool_choice auto and parallel_tool_calls false, served: both backends compile and
apply the grammars (backends.tools.strict) on the tiny model with real templates, refusals name their
field, and a forced call's stream stops at the one call parallel_tool_calls false allows. The grammars
themselves are tests/test_tool_strict.py's.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.conftest import SERVED_PROFILES, model_entry, start_server
from tests.real_assets import templates_dir
from tests.test_tool_strict import SCHEMAS, TIME


def _template(name: str) -> str:
    return (templates_dir() / name).read_text()


@pytest.fixture(scope="module", params=SERVED_PROFILES)
def strict_server(request: pytest.FixtureRequest, tiny_llama, tmp_path_factory):
    """The tiny model four times: with its own template (tools described, Hermes calls), with the real
    Mistral Nemo and gpt-oss templates (formats whose calls open with special tokens, plain text in this
    vocabulary), and with functionary v3.2's (whose output is all messages to recipients)."""
    profile = request.param
    models = [
        model_entry(tiny_llama, profile, preload=True),
        model_entry(tiny_llama, profile, name="tiny-mistral", aliases=[],
                    chat_template=_template("mistralai-Mistral-Nemo-Instruct-2407.jinja")),
        model_entry(tiny_llama, profile, name="tiny-gpt-oss", aliases=[],
                    chat_template=_template("openai-gpt-oss-120b.jinja")),
        model_entry(tiny_llama, profile, name="tiny-functionary", aliases=[],
                    chat_template=_template("meetkai-functionary-medium-v3.2.jinja")),
    ]  # fmt: skip
    running = start_server({"profile": profile, "profiles": {profile: {"models": models}}},
                           tmp_path_factory.mktemp(f"strict-{profile}"))  # fmt: skip
    yield running
    running.stop()


def _tools(strict: bool = True) -> list[dict]:
    # gpt-oss's template writes every function's description (a function without one fails it)
    functions = [{"name": name, "description": f"{name} tool", "parameters": schema, "strict": strict}
                 for name, schema in SCHEMAS.items()]  # fmt: skip
    return [{"type": "function", "function": function} for function in functions]


def _post(server, **body) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 16,
            "temperature": 0, **body}  # fmt: skip
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)


@pytest.mark.parametrize("stream", [False, True])
def test_strict_under_auto_is_served_with_its_grammar(strict_server, stream: bool):
    """The random model writes no call: its text comes through as content, whole or streamed, under the
    grammar on either backend (which would refuse a grammar it could not compile)."""
    client = strict_server.openai()
    kwargs = {"model": "tiny", "messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 16,
              "temperature": 0, "tools": _tools()}  # fmt: skip
    if not stream:
        choice = client.chat.completions.create(**kwargs, parallel_tool_calls=False).choices[0]
        assert choice.finish_reason == "length" and choice.message.content and not choice.message.tool_calls
        return
    chunks = list(client.chat.completions.create(**kwargs, parallel_tool_calls=False, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(**kwargs, parallel_tool_calls=False).choices[0].message.content
    assert content == whole


def test_strict_refusals_name_the_field(strict_server):
    response_format = {"type": "json_object"}
    for body, param in [
        ({"tools": _tools(), "response_format": response_format}, "response_format"),
        ({"tools": _tools(), "min_tokens": 4}, "min_tokens"),
    ]:
        response = _post(strict_server, **body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param, error


def test_functionary_v3_2_is_served_under_strict(strict_server):
    """The grammar makes the random model address its messages: whatever it writes is read as the answer
    or as calls whose arguments validate, and no `>>>` reaches the content."""
    for seed in range(4):
        response = _post(strict_server, model="tiny-functionary", tools=_tools(), max_tokens=80,
                         temperature=1.0, seed=seed)  # fmt: skip
        assert response.status_code == 200, response.text
        message = response.json()["choices"][0]["message"]
        assert ">>>" not in (message.get("content") or "")
        for call in message.get("tool_calls") or ():
            jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


def test_strict_is_honoured_where_the_grammar_does_not_need_a_trigger(strict_server):
    """A forced call is always schema-exact, on any format; so is none, with no tools shown."""
    for model in ("tiny-mistral", "tiny-gpt-oss"):
        for choice in ("required", "none"):
            response = _post(strict_server, model=model, tools=_tools(), tool_choice=choice, max_tokens=200)
            assert response.status_code == 200, response.text
            for call in response.json()["choices"][0]["message"].get("tool_calls") or ():
                name, arguments = call["function"]["name"], json.loads(call["function"]["arguments"])
                jsonschema.validate(arguments, SCHEMAS[name])


def test_a_gpt_oss_template_serves_tools_on_both_protocols(strict_server):
    """The real gpt-oss template takes the tools (its own developer section); the random model writes no
    harmony, so its text is the answer, not reasoning."""
    without = _post(strict_server, model="tiny-gpt-oss").json()
    with_tools = _post(strict_server, model="tiny-gpt-oss", tools=_tools(False)).json()
    assert with_tools["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"]
    message = with_tools["choices"][0]["message"]
    assert message["content"] and not message.get("reasoning_content")
    time_tool = {"name": "get_time", "description": "The time", "parameters": TIME}
    tools = [{"type": "function", "function": time_tool}]
    body = {"model": "tiny-gpt-oss", "messages": [{"role": "user", "content": "Time?"}], "tools": tools,
            "stream": False, "options": {"temperature": 0, "num_predict": 16}}  # fmt: skip
    ollama = httpx.post(f"{strict_server.base_url}/api/chat", json=body, timeout=60)
    assert ollama.status_code == 200, ollama.text
    assert ollama.json()["message"]["content"] and "thinking" not in ollama.json()["message"]


def test_parallel_tool_calls_false_under_auto_is_accepted_on_every_format(strict_server):
    for model in ("tiny", "tiny-mistral", "tiny-gpt-oss"):
        response = _post(strict_server, model=model, tools=_tools(False), parallel_tool_calls=False)
        assert response.status_code == 200, response.text


def test_a_stream_stops_at_the_one_call_parallel_false_allows(strict_server):
    """A forced call under parallel_tool_calls false: the stream ends once the call is complete (it leaves
    the generation there), on the call the unary answer has, with finish_reason tool_calls."""
    client = strict_server.openai()
    kwargs = {"model": "tiny", "messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 300,
              "temperature": 0, "tools": _tools(False), "tool_choice": "required",
              "parallel_tool_calls": False}  # fmt: skip
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = [c for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or ()]
    (call,) = whole.message.tool_calls
    assert {d.index for d in deltas} == {0} and deltas[0].function.name == call.function.name
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert arguments == call.function.arguments
    jsonschema.validate(json.loads(arguments), SCHEMAS[deltas[0].function.name])
