"""Strict functions under tool_choice auto, and parallel_tool_calls false.

The grammar (backends.tools.strict) is checked the way a random-weight model would meet it: over the tiny
model's real vocabulary, tokens are drawn at random from what the grammar allows (a random model's output
is exactly such a walk, biased by its random logits), from the moment the format's trigger is written; every
call read back must match its schema, and without the grammar the same walk writes no valid call. The
random tiny model never writes a `<tool_call>` of its own, so the servers' tests check the way in (both
backends compile and apply the grammar, free text is untouched) and every refusal.
"""

from __future__ import annotations

import json
import random

import httpx
import jsonschema
import numpy as np
import pytest

from backends.base import Prompt, StructuredOutput
from backends.conversation import Conversation, Message, Role, ToolDefinition
from backends.structured import StructuredCompiler, Vocabulary, _byte_compiler
from backends.tools.detect import parser_class
from backends.tools.strict import SHAPES, StrictFormatError, auto_call_output
from gateway.tool_calls import finish_reason, read_all, tool_plan
from tests.conftest import SERVED_PROFILES, model_entry, start_server
from tests.real_assets import templates_dir

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 3},
        "alerts": {"type": "boolean"},
    },
    "required": ["city", "days", "alerts"],
}
TIME = {"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
STRICT_TOOLS = tuple(ToolDefinition(name, None, json.dumps(s), strict=True) for name, s in SCHEMAS.items())
ASK = (Message.of_text(Role.USER, "Weather in Paris?"),)
WALKS = 12  # random walks per case; each is a few hundred tokens at most (~0.1 s)
MAX_STEPS = 300


@pytest.fixture(scope="module")
def tiny_vocabulary(tiny_llama):
    from backends.paged.tokenizer import Tokenizer

    size = json.loads((tiny_llama.hf_dir / "config.json").read_text())["vocab_size"]
    tokenizer = Tokenizer.from_dir(tiny_llama.hf_dir, size)
    vocabulary = Vocabulary([tokenizer.token_bytes(t) for t in range(size)], tokenizer.eos_ids)
    return tokenizer, StructuredCompiler(vocabulary, max_threads=1)


def _walk(tokenizer, compiler, spec: StructuredOutput | None, opening: str, seed: int) -> tuple[str, bool]:
    """`opening` written, then tokens drawn at random among those `spec` allows (any token without a spec)
    until the grammar ends or MAX_STEPS: (the text, whether the grammar ended it)."""
    rng = random.Random(seed)
    tokens = tokenizer.encode(opening, add_special_tokens=False)
    matcher = compiler.matcher(spec) if spec is not None else None
    for token in tokens:
        assert matcher is None or matcher.accept(token)
    everything = np.arange(compiler.vocab_size)
    for _ in range(MAX_STEPS):
        allowed = np.flatnonzero(matcher.allowed_mask()) if matcher is not None else everything
        token = int(rng.choice(allowed))
        if matcher is not None:
            assert matcher.accept(token)
            if matcher.is_terminated:
                return tokenizer.decode(tokens), True
        elif token in tokenizer.eos_ids:
            break
        tokens.append(token)
    return tokenizer.decode(tokens), False


def _conversation(tools=STRICT_TOOLS, parallel: bool = True) -> Conversation:
    return Conversation(ASK, tools, parallel_tool_calls=parallel)


@pytest.mark.parametrize("parallel", [True, False])
def test_strict_calls_of_a_random_walk_match_their_schemas(tiny_vocabulary, parallel: bool):
    tokenizer, compiler = tiny_vocabulary
    conversation = _conversation(parallel=parallel)
    spec = auto_call_output(conversation, "hermes")
    assert spec is not None and spec.kind == "structural_tag"
    plan = tool_plan(conversation, Prompt([0], "", "hermes"), None, strict_grammar=True)
    assert plan is not None and plan.parser == "hermes" and plan.tagged_only
    assert plan.max_calls == (None if parallel else 1)
    for seed in range(WALKS):
        text, ended = _walk(tokenizer, compiler, spec, "Let me check. <tool_call>", seed)
        reader = read_all(plan, text)
        assert reader.calls, text
        for call in reader.calls:
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        assert reader.content.startswith("Let me check. ")  # then what follows the calls, if anything
        if not parallel:  # the grammar ends after the first call: the output is over
            assert ended and len(reader.calls) == 1 and text.endswith("</tool_call>"), text


def test_the_same_walk_without_the_grammar_writes_no_valid_call(tiny_vocabulary):
    """What the grammar prevents: the random model's own arguments."""
    tokenizer, compiler = tiny_vocabulary
    plan = tool_plan(_conversation(), Prompt([0], "", "hermes"), None, strict_grammar=True)
    assert plan is not None
    for seed in range(WALKS):
        text, _ = _walk(tokenizer, compiler, None, "Let me check. <tool_call>", seed)
        for call in read_all(plan, text).calls:
            with pytest.raises((ValueError, jsonschema.ValidationError)):
                jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


def test_only_strict_functions_have_their_arguments_constrained():
    """A non-strict function's arguments are any JSON object; its name is still one of the tools."""
    loose = ToolDefinition("get_time", None, json.dumps(TIME))  # not strict
    spec = auto_call_output(_conversation((STRICT_TOOLS[0], loose)), "hermes")
    assert spec is not None
    for text, allowed in [
        ('<tool_call>\n{"name": "get_time", "arguments": {"zone": [1, 2]}}\n</tool_call>', True),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"zone": [1, 2]}}\n</tool_call>', False),
        ('<tool_call>\n{"name": "get_date", "arguments": {}}\n</tool_call>', False),
    ]:
        matcher = _byte_compiler().matcher(spec)
        accepted = all(matcher.accept(byte) for byte in text.encode())
        assert accepted == allowed, text


@pytest.mark.parametrize("tool_format", sorted(SHAPES))
def test_each_formats_grammar_writes_what_its_parser_reads(tool_format: str):
    call = {
        "hermes": '<tool_call>\n{"name": "get_weather", "arguments": %s}\n</tool_call>',
        "functionary_v3_1": "<function=get_weather>%s</function>",
        "firefunction_v2": ' functools[{"name": "get_weather", "arguments": %s}]',
    }[tool_format]
    good = json.dumps({"city": "Oslo", "days": 2, "alerts": True})
    bad = json.dumps({"city": "Rome", "days": 2, "alerts": True})
    spec = auto_call_output(_conversation(), tool_format)
    assert spec is not None
    for arguments, allowed in [(good, True), (bad, False)]:
        text = f"Sure. {call % arguments} Done."
        matcher = _byte_compiler().matcher(spec)
        assert all(matcher.accept(byte) for byte in text.encode()) == allowed, text
        if allowed:
            parser = parser_class(tool_format)(leading=False)
            parser.feed(text)
            parser.finish()
            assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [
                ("get_weather", json.loads(good))
            ]


def test_formats_without_a_usable_trigger_refuse_strict():
    tools = (ToolDefinition("get_time"), STRICT_TOOLS[0])
    for tool_format in ("mistral", "llama3_json", "harmony", "deepseek_v3", "granite", "functionary_v3_2"):
        with pytest.raises(StrictFormatError, match=f"format '{tool_format}'") as caught:
            auto_call_output(_conversation(tools), tool_format)
        assert caught.value.tool_index == 1
    assert auto_call_output(_conversation((ToolDefinition("get_time"),)), "mistral") is None  # none strict


# ---- through the servers -------------------------------------------------------------------------------


def _template(name: str) -> str:
    return (templates_dir() / name).read_text()


@pytest.fixture(scope="module", params=SERVED_PROFILES)
def strict_server(request: pytest.FixtureRequest, tiny_llama, tmp_path_factory):
    """The tiny model three times: with its own template (tools described, Hermes calls), and with the real
    Mistral Nemo and gpt-oss templates (formats whose calls open with special tokens)."""
    profile = request.param
    models = [
        model_entry(tiny_llama, profile, preload=True),
        model_entry(tiny_llama, profile, name="tiny-mistral", aliases=[],
                    chat_template=_template("mistralai-Mistral-Nemo-Instruct-2407.jinja")),
        model_entry(tiny_llama, profile, name="tiny-gpt-oss", aliases=[],
                    chat_template=_template("openai-gpt-oss-120b.jinja")),
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
        ({"model": "tiny-mistral", "tools": _tools()}, "tools[0].function.strict"),
        ({"model": "tiny-gpt-oss", "tools": [_tools(False)[0], _tools()[1]]}, "tools[1].function.strict"),
    ]:
        response = _post(strict_server, **body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param, error
    message = _post(strict_server, model="tiny-mistral", tools=_tools()).json()["error"]["message"]
    assert "format 'mistral'" in message and "tool_choice 'required'" in message


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


def test_a_reader_closes_after_the_one_call_parallel_false_allows():
    two = ('<tool_call>\n{"name": "get_time", "arguments": {"utc": true}}\n</tool_call>\n'
           '<tool_call>\n{"name": "get_time", "arguments": {"utc": false}}\n</tool_call>')  # fmt: skip
    for parallel, count in [(True, 2), (False, 1)]:
        conversation = Conversation(ASK, (ToolDefinition("get_time", None, json.dumps(TIME)),),
                                    parallel_tool_calls=parallel)  # fmt: skip
        plan = tool_plan(conversation, Prompt([0], "", "hermes"), None)
        assert plan is not None
        reader = plan.new_reader()
        reader.feed(two[: two.index("</tool_call>")])  # the first call is complete here
        assert reader.closed == (not parallel)
        reader.feed(two[two.index("</tool_call>") :])
        reader.finish()
        assert len(reader.calls) == count and json.loads(reader.calls[0].arguments) == {"utc": True}
        # an output that went on to its length after the call it may have still ends on that call
        expected = "length" if parallel else "tool_calls"
        assert finish_reason("length", reader.calls, reader.closed) == expected


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


@pytest.mark.parametrize("parallel", [True, False])
def test_a_listed_format_holds_one_call_when_parallel_calls_are_off(parallel: bool):
    """Firefunction writes its calls in one list: without parallel calls the list holds one, then ends."""
    call = '{"name": "get_time", "arguments": {"utc": true}}'
    spec = auto_call_output(_conversation(parallel=parallel), "firefunction_v2")
    assert spec is not None
    for text, allowed in [(f" functools[{call}]", True), (f" functools[{call}, {call}]", parallel)]:
        matcher = _byte_compiler().matcher(spec)
        assert all(matcher.accept(byte) for byte in text.encode()) == allowed, text
