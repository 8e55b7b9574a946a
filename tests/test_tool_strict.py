"""Strict functions under tool_choice auto, and parallel_tool_calls false.

The grammar (backends.tools.strict) is checked the way a random-weight model would meet it: over the tiny
model's real vocabulary, tokens are drawn at random from what the grammar allows (a random model's output
is exactly such a walk, biased by its random logits), from the moment the format's trigger is written; every
call read back must match its schema, and without the grammar the same walk writes no valid call. The
random tiny model never writes a `<tool_call>` of its own, so the servers' tests
(tests/test_tool_strict_serving.py) check the way in (both backends compile and apply the grammar, free text
is untouched) and every refusal.
"""

from __future__ import annotations

import json
import random

import jsonschema
import numpy as np
import pytest

from backends.base import Prompt, StructuredOutput
from backends.conversation import Conversation, Message, Role, ToolDefinition
from backends.structured import StructuredCompiler, Vocabulary, _byte_compiler
from backends.tools.strict import SUPPORTED, StrictFormatError, auto_call_output
from gateway.tool_calls import finish_reason, read_all, tool_plan

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


_GOOD = json.dumps({"city": "Oslo", "days": 2, "alerts": True})
_CALLS = {  # each format's call of get_weather, in free text where the format has any
    "hermes": 'Sure. <tool_call>\n{"name": "get_weather", "arguments": %s}\n</tool_call> Done.',
    "functionary_v3_1": "Sure. <function=get_weather>%s</function> Done.",
    "firefunction_v2": 'Sure.  functools[{"name": "get_weather", "arguments": %s}] Done.',
    "mistral": "Sure. [TOOL_CALLS]get_weather[ARGS]%s Done.",
    "llama3_json": 'Sure. <|python_tag|>{"name": "get_weather", "parameters": %s} Done.',
    "granite": 'Sure. <|tool_call|>[{"name": "get_weather", "arguments": %s}] Done.',
    "deepseek_v3": "Sure. <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>%s"
    "<｜tool▁call▁end｜><｜tool▁calls▁end｜> Done.",
    # harmony is all messages: reasoning, then the call (its <|call|> ends the generation, unwritten)
    "harmony": "<|channel|>analysis<|message|>Sure.<|end|><|start|>assistant to=functions.get_weather"
    "<|channel|>commentary <|constrain|>json<|message|>%s",
    # after the generation prompt's >>>: the answer to `all`, then a message to the function
    "functionary_v3_2": "all\nSure.\n>>>get_weather\n%s",
}


@pytest.mark.parametrize("tool_format", sorted(SUPPORTED))
def test_each_formats_grammar_writes_what_its_parser_reads(tool_format: str):
    """Over the bytes (the markers spelled out, as a vocabulary's special tokens are matched once preserved:
    tests/test_tool_markers.py), the grammar takes a call with valid arguments, refuses invalid ones, and
    the format's reader finds the call in what it took."""
    call = _CALLS[tool_format]
    bad = json.dumps({"city": "Rome", "days": 2, "alerts": True})
    markers = {"[ARGS]": 1} if tool_format == "mistral" else {}  # Mistral Small's form: [ARGS] is a token
    spec = auto_call_output(_conversation(), tool_format, markers)
    assert spec is not None
    for arguments, allowed in [(_GOOD, True), (bad, False)]:
        text = call % arguments
        matcher = _byte_compiler().matcher(spec)
        assert all(matcher.accept(byte) for byte in text.encode()) == allowed, text
        if allowed:
            plan = tool_plan(_conversation(), Prompt([0], "", tool_format), None, strict_grammar=True)
            assert plan is not None
            reader = read_all(plan, text)
            assert [(c.name, json.loads(c.arguments)) for c in reader.calls] == [
                ("get_weather", json.loads(_GOOD))
            ]
            assert reader.content.startswith("Sure.") or reader.reasoning == "Sure."


def test_mistral_without_an_args_token_writes_its_calls_as_a_list():
    spec = auto_call_output(_conversation(), "mistral", {})
    assert spec is not None
    listed = f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {_GOOD}}}]'
    for text, allowed in [(listed, True), (f"[TOOL_CALLS]get_weather[ARGS]{_GOOD}", False)]:
        matcher = _byte_compiler().matcher(spec)
        assert all(matcher.accept(byte) for byte in text.encode()) == allowed, text


def test_harmony_under_strict_is_all_messages():
    """gpt-oss's output has no free text around its messages: plain text is refused, every channel is taken,
    and a message may end on the end-of-generation token (not written) instead of <|end|>."""
    spec = auto_call_output(_conversation(), "harmony")
    assert spec is not None
    for text, allowed in [
        ("Hello", False),
        ("<|channel|>analysis<|message|>Hm.<|end|><|start|>assistant<|channel|>final<|message|>Hi", True),
        ("<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant<|channel|>commentary "
         f"to=functions.get_weather json<|message|>{_GOOD}", True),
        ("<|channel|>commentary to=functions.get_date<|message|>{}", False),  # no such function
    ]:  # fmt: skip
        matcher = _byte_compiler().matcher(spec)
        taken = all(matcher.accept(byte) for byte in text.encode()) and matcher.accept(256)  # 256: the end
        assert taken == allowed, text


def test_every_format_has_a_strict_grammar():
    """A format added without one is refused with a 400 naming the first strict function, never ignored."""
    from backends.tools.formats import PARSERS

    assert set(SUPPORTED) == set(PARSERS)
    tools = (ToolDefinition("get_time"), STRICT_TOOLS[0])
    with pytest.raises(StrictFormatError, match="format 'unheard_of'") as caught:
        auto_call_output(_conversation(tools), "unheard_of")
    assert caught.value.tool_index == 1
    assert auto_call_output(_conversation((ToolDefinition("get_time"),)), "mistral") is None  # none strict


@pytest.mark.parametrize("parallel", [True, False])
def test_functionary_v3_2_under_strict_is_all_messages(parallel: bool):
    """No free text: the first message's recipient comes at once (`all` or a function); without parallel
    calls, one call ends the output."""
    spec = auto_call_output(_conversation(parallel=parallel), "functionary_v3_2")
    assert spec is not None
    two_calls = f'get_time\n{{"utc": true}}>>>get_weather\n{_GOOD}'  # as the template writes them
    for text, allowed in [
        ("all\nHello there", True),
        ("Hello", False),
        (f"get_weather\n{_GOOD}", True),
        ("get_date\n{}", False),
        ("all\nSure >>>all\nagain", parallel),
        (two_calls, parallel),
    ]:
        matcher = _byte_compiler().matcher(spec)
        taken = all(matcher.accept(byte) for byte in text.encode()) and matcher.accept(256)  # 256: the end
        assert taken == allowed, text


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


@pytest.mark.parametrize("parallel", [True, False])
def test_a_listed_format_holds_one_call_when_parallel_calls_are_off(parallel: bool):
    """Firefunction writes its calls in one list: without parallel calls the list holds one, then ends."""
    call = '{"name": "get_time", "arguments": {"utc": true}}'
    spec = auto_call_output(_conversation(parallel=parallel), "firefunction_v2")
    assert spec is not None
    for text, allowed in [(f" functools[{call}]", True), (f" functools[{call}, {call}]", parallel)]:
        matcher = _byte_compiler().matcher(spec)
        assert all(matcher.accept(byte) for byte in text.encode()) == allowed, text
