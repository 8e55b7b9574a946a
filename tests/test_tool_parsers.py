"""The tool-call formats on outputs written here in each family's format (as its chat template teaches it,
and as models were seen to stray from it), whole and streamed in every chunking."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest

from backends.tools.detect import format_of_template, parser_class
from backends.tools.events import ContentDelta, ToolCallArguments, ToolCallBegin, ToolCallEnd
from backends.tools.formats import PARSERS
from backends.tools.reasoning import ReasoningParser
from tests.real_assets import templates_dir


@dataclass
class Case:
    parser: str
    output: str
    content: str
    calls: list[tuple[str, dict | str]] = field(default_factory=list)  # (name, arguments)
    ids: list[str | None] | None = None


WEATHER = {"city": "Paris", "unit": "celsius"}
TIME = {"timezone": "Europe/Paris"}
CASES = {
    "hermes-one": Case("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
                       '"unit": "celsius"}}\n</tool_call>', "", [("get_weather", WEATHER)]),
    "hermes-text-then-two": Case(
        "hermes",
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
        '"celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"timezone": '
        '"Europe/Paris"}}\n</tool_call>',
        "Let me check.\n", [("get_weather", WEATHER), ("get_time", TIME)]),
    "hermes-bare-json": Case("hermes", '{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}', "",
                             [("get_time", TIME)]),
    "hermes-no-closing-tag": Case("hermes", '<tool_call>\n{"name": "get_time", "arguments": '
                                  '{"timezone": "Europe/Paris"}}', "", [("get_time", TIME)]),
    "hermes-arguments-as-string": Case("hermes", '<tool_call>{"name": "get_time", "arguments": '
                                       '"{\\"timezone\\": \\"Europe/Paris\\"}"}</tool_call>', "",
                                       [("get_time", TIME)]),
    "hermes-plain-answer": Case("hermes", "Paris is sunny {mostly} today.", "Paris is sunny {mostly} today."),
    "hermes-json-answer-is-content": Case("hermes", '{"answer": 42}', '{"answer": 42}'),
    "hermes-braces-in-strings": Case("hermes", '<tool_call>{"name": "echo", "arguments": {"text": "a } ] '
                                     '\\" { b"}}</tool_call>', "", [("echo", {"text": 'a } ] " { b'})]),
    "llama3-json": Case("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": '
                        '"celsius"}}', "", [("get_weather", WEATHER)]),
    "llama3-python-tag-two": Case("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": '
                                  '{"city": "Paris", "unit": "celsius"}}; {"name": "get_time", '
                                  '"parameters": {"timezone": "Europe/Paris"}}', "",
                                  [("get_weather", WEATHER), ("get_time", TIME)]),
    "llama3-answer": Case("llama3_json", "The weather in Paris is mild.", "The weather in Paris is mild."),
    # Nemo's id comes after the arguments, too late for a stream's first delta: the caller makes one
    "mistral-nemo": Case("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", '
                         '"unit": "celsius"}, "id": "a1B2c3D4e"}]', "", [("get_weather", WEATHER)], [None]),
    "mistral-small-3.2": Case("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}'
                              '[TOOL_CALLS]get_time[ARGS]{"timezone": "Europe/Paris"}', "",
                              [("get_weather", WEATHER), ("get_time", TIME)]),
    "mistral-call-id": Case("mistral", '[TOOL_CALLS]get_time[CALL_ID]x9Y8z7W6v[ARGS]{"timezone": '
                            '"Europe/Paris"}', "", [("get_time", TIME)], ["x9Y8z7W6v"]),
    "deepseek-v3": Case("deepseek_v3", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
                        'get_weather\n```json\n{"city": "Paris", "unit": "celsius"}\n```<｜tool▁call▁end｜>'
                        "<｜tool▁calls▁end｜>", "", [("get_weather", WEATHER)]),
    "deepseek-v3.1-two": Case("deepseek_v3", "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather"
                              '<｜tool▁sep｜>{"city": "Paris", "unit": "celsius"}<｜tool▁call▁end｜>'
                              '<｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"timezone": "Europe/Paris"}'
                              "<｜tool▁call▁end｜><｜tool▁calls▁end｜>", "Checking.",
                              [("get_weather", WEATHER), ("get_time", TIME)]),
    "firefunction": Case("firefunction_v2", ' functools[{"name": "get_weather", "arguments": {"city": '
                         '"Paris", "unit": "celsius"}}, {"name": "get_time", "arguments": {"timezone": '
                         '"Europe/Paris"}}]', " ", [("get_weather", WEATHER), ("get_time", TIME)]),
    "granite": Case("granite", '<|tool_call|>[{"name": "get_time", "arguments": {"timezone": '
                    '"Europe/Paris"}}]', "", [("get_time", TIME)]),
    "functionary-v3.2-call": Case("functionary_v3_2", 'get_weather\n{"city": "Paris", "unit": "celsius"}'
                                  '>>>get_time\n{"timezone": "Europe/Paris"}', "",
                                  [("get_weather", WEATHER), ("get_time", TIME)]),
    "functionary-v3.2-answer": Case("functionary_v3_2", "all\nIt is sunny in Paris.",
                                    "It is sunny in Paris."),
    "functionary-v3.2-answer-then-call": Case("functionary_v3_2", 'all\nChecking.>>>get_time\n{"timezone": '
                                              '"Europe/Paris"}', "Checking.", [("get_time", TIME)]),
    "function-tag": Case("functionary_v3_1",
                         'Sure.<function=get_time>{"timezone": "Europe/Paris"}</function>', "Sure.",
                         [("get_time", TIME)]),
}  # fmt: skip


def _chunkings(text: str) -> dict[str, list[str]]:
    rng = random.Random(0)
    pieces, position = [], 0
    while position < len(text):
        size = rng.randint(1, 7)
        pieces.append(text[position : position + size])
        position += size
    return {"whole": [text], "characters": list(text), "random": pieces}


def _run(parser_name: str, chunks: list[str]):
    parser = parser_class(parser_name)()
    events = [event for chunk in chunks for event in parser.feed(chunk)] + parser.finish()
    return parser, events


@pytest.mark.parametrize("chunking", ["whole", "characters", "random"])
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_each_format_streams_content_and_calls(case_name: str, chunking: str):
    case = CASES[case_name]
    parser, events = _run(case.parser, _chunkings(case.output)[chunking])
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert content == case.content
    begun = [e for e in events if isinstance(e, ToolCallBegin)]
    assert [(e.index, e.name) for e in begun] == [(i, name) for i, (name, _) in enumerate(case.calls)]
    assert sorted(e.index for e in events if isinstance(e, ToolCallEnd)) == list(range(len(case.calls)))
    for index, (name, arguments) in enumerate(case.calls):
        streamed = "".join(
            e.fragment for e in events if isinstance(e, ToolCallArguments) and e.index == index
        )
        assert json.loads(streamed) == arguments, streamed
        assert json.loads(parser.calls[index].arguments) == arguments
        assert parser.calls[index].name == name
    if case.ids is not None:
        assert [c.id for c in parser.calls] == case.ids


@pytest.mark.parametrize("case_name", sorted(CASES))
def test_a_call_begins_before_its_arguments_are_complete(case_name: str):
    """The name is reported as soon as it is readable, then the arguments piece by piece (cut here in the
    middle of the first argument's value)."""
    case = CASES[case_name]
    if not case.calls:
        return
    name, _ = case.calls[0]
    cut = min(i for i in (case.output.find(word) for word in ("Paris", "Europe", "a }")) if i >= 0)
    parser = parser_class(case.parser)()
    early = parser.feed(case.output[:cut])
    assert any(isinstance(e, ToolCallBegin) and e.name == name for e in early), early
    assert not any(isinstance(e, ToolCallEnd) for e in early)


def test_events_are_in_order_begin_arguments_end():
    _, events = _run("hermes", list(CASES["hermes-text-then-two"].output))
    state: dict[int, str] = {}
    for event in events:
        if isinstance(event, ToolCallBegin):
            assert event.index not in state
            state[event.index] = "open"
        elif isinstance(event, ToolCallArguments):
            assert state[event.index] == "open"
        elif isinstance(event, ToolCallEnd):
            assert state.pop(event.index) == "open"
        else:
            assert not state, "content inside a call"


def test_a_call_cut_short_by_max_tokens_still_ends():
    parser, events = _run("hermes", ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'])
    assert [type(e) for e in events] == [ToolCallBegin, ToolCallArguments, ToolCallEnd]
    assert parser.calls[0].arguments == '{"city": "Par'


def test_a_marker_that_leads_nowhere_is_content():
    for name, text in [("hermes", "<tool_call> not json"), ("mistral", "[TOOL_CALLS] what?"),
                       ("functionary_v3_1", "<function=no closing")]:  # fmt: skip
        parser, events = _run(name, [text])
        assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == text, name
        assert parser.calls == []


# ---- the format from the template --------------------------------------------------------------------

EXPECTED_FORMATS = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": "hermes",
    "Qwen-Qwen3-0.6B.jinja": "hermes",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": "hermes",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": "hermes",
    "meta-llama-Llama-3.1-8B-Instruct.jinja": "llama3_json",
    "meta-llama-Llama-3.2-3B-Instruct.jinja": "llama3_json",
    "meta-llama-Llama-3.3-70B-Instruct.jinja": "llama3_json",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral",
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": "mistral",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": "deepseek_v3",
    "deepseek-ai-DeepSeek-V3.1.jinja": "deepseek_v3",
    "fireworks-ai-llama-3-firefunction-v2.jinja": "firefunction_v2",
    "meetkai-functionary-medium-v3.2.jinja": "functionary_v3_2",
    "meetkai-functionary-medium-v3.1.jinja": "functionary_v3_1",
    "ibm-granite-granite-3.3-2B-Instruct.jinja": "granite",
    "google-gemma-2-2b-it.jinja": None,
    "openai-gpt-oss-120b.jinja": "harmony",
}


@pytest.mark.parametrize("template", sorted(EXPECTED_FORMATS))
def test_the_format_is_read_from_the_real_template(template: str):
    source = (templates_dir() / template).read_text()
    assert format_of_template(source) == EXPECTED_FORMATS[template]


def test_every_format_has_a_parser_and_unknown_names_are_refused():
    assert {name for name in EXPECTED_FORMATS.values() if name} <= set(PARSERS)
    with pytest.raises(ValueError, match="unknown tool_parser 'nope'"):
        parser_class("nope")


# ---- reasoning ---------------------------------------------------------------------------------------

REASONING_CASES = [
    ("<think>\nThe user wants Paris.\n</think>\n\nParis.", False, "\nThe user wants Paris.\n", "Paris."),
    ("The user wants Paris.\n</think>\n\nParis.", True, "The user wants Paris.\n", "Paris."),
    ("Paris.", False, "", "Paris."),
    ("Paris. <think> is a tag.", False, "", "Paris. <think> is a tag."),
    ("<think>cut short", False, "cut short", ""),
]


@pytest.mark.parametrize("chunking", ["whole", "characters", "random"])
@pytest.mark.parametrize(("output", "inside", "reasoning", "content"), REASONING_CASES)
def test_reasoning_is_split_from_the_answer(output, inside, reasoning, content, chunking):
    parser = ReasoningParser(starts_inside=inside)
    deltas = [parser.feed(chunk) for chunk in _chunkings(output)[chunking]] + [parser.finish()]
    assert "".join(d.reasoning for d in deltas) == reasoning
    assert "".join(d.content for d in deltas) == content


# ---- gpt-oss's harmony messages ------------------------------------------------------------------------

ANALYSIS = "<|channel|>analysis<|message|>The user asks for the weather in Paris. Use get_weather.<|end|>"
HARMONY_CASES = {
    # what gpt-oss writes after its generation prompt `<|start|>assistant` (the end token, <|return|> or
    # <|call|>, is an end-of-sequence id: a backend stops on it and may or may not pass its text on)
    "answer": (f"{ANALYSIS}<|start|>assistant<|channel|>final<|message|>It is 18°C and sunny in Paris.",
               "The user asks for the weather in Paris. Use get_weather.", "It is 18°C and sunny in Paris.",
               []),
    "answer-with-return": ("<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final"
                           "<|message|>Hi!<|return|>", "Easy.", "Hi!", []),
    "call-recipient-after-channel": (
        f'{ANALYSIS}<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json'
        '<|message|>{"city": "Paris", "unit": "celsius"}<|call|>',
        "The user asks for the weather in Paris. Use get_weather.", "", [("get_weather", WEATHER)]),
    "call-recipient-in-header": (  # as the template renders earlier calls
        '<|channel|>analysis<|message|>Need the time.<|end|><|start|>assistant to=functions.get_time'
        '<|channel|>commentary json<|message|>{"timezone": "Europe/Paris"}', "Need the time.", "",
        [("get_time", TIME)]),
    "call-without-analysis": (' to=functions.get_time<|channel|>commentary json<|message|>{"timezone": '
                              '"Europe/Paris"}<|call|>', "", "", [("get_time", TIME)]),
    "preamble-then-call": (
        "<|channel|>commentary<|message|>Checking the weather.<|end|><|start|>assistant<|channel|>commentary"
        ' to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris", "unit": "celsius"}<|call|>',
        "", "Checking the weather.", [("get_weather", WEATHER)]),
    "cut-short-in-analysis": ("<|channel|>analysis<|message|>The user", "The user", "", []),
    "not-harmony": ("The weather is <|fine|> today.", "", "The weather is <|fine|> today.", []),
}  # fmt: skip


def _read_harmony(output: str, chunks: list[str]):
    from backends.base import Prompt
    from backends.conversation import Conversation, Message, Role, ToolDefinition
    from gateway.tool_calls import ReasoningText, tool_plan

    conversation = Conversation((Message.of_text(Role.USER, "?"),), (ToolDefinition("get_weather"),))
    plan = tool_plan(conversation, Prompt([0], "", "harmony"), None)
    assert plan is not None and plan.channels and plan.parser == "harmony"
    reader = plan.new_reader()
    events = [event for chunk in chunks for event in reader.feed(chunk)] + reader.finish()
    streamed_reasoning = "".join(e.text for e in events if isinstance(e, ReasoningText))
    streamed_content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    return reader, streamed_reasoning, streamed_content


@pytest.mark.parametrize("chunking", ["whole", "characters", "random"])
@pytest.mark.parametrize("case_name", sorted(HARMONY_CASES))
def test_harmony_channels_split_into_reasoning_content_and_calls(case_name: str, chunking: str):
    output, reasoning, content, calls = HARMONY_CASES[case_name]
    reader, streamed_reasoning, streamed_content = _read_harmony(output, _chunkings(output)[chunking])
    assert (reader.reasoning, reader.content) == (reasoning, content)
    assert (streamed_reasoning, streamed_content) == (reasoning, content)
    assert [(c.name, json.loads(c.arguments)) for c in reader.calls] == calls


def test_a_harmony_call_the_template_renders_reads_back_as_that_call():
    """The real gpt-oss template renders an earlier call; that text, as a model's output after the
    generation prompt `<|start|>assistant`, is read back as the same call."""
    from backends.base import RenderOptions
    from backends.chat_template import ChatTemplate
    from backends.conversation import Conversation, Message, Role, ToolCall, ToolDefinition
    from backends.tool_prompt import render_prompt

    template = ChatTemplate((templates_dir() / "openai-gpt-oss-120b.jinja").read_text(), "", "")
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}}
    tools = (ToolDefinition("get_weather", "Weather in a city", json.dumps(schema)),)
    call = ToolCall("call_1", "get_weather", json.dumps(WEATHER))
    messages = (Message.of_text(Role.USER, "Weather in Paris?"), Message(Role.ASSISTANT, (), (call,)))
    prompt = render_prompt(template, Conversation(messages, tools), RenderOptions(), lambda _: [0], "gpt-oss")
    assert prompt.tool_format == "harmony" and not prompt.tools_described
    assert "namespace functions {" in prompt.text and "type get_weather = (_: {" in prompt.text
    start = prompt.text.index("<|start|>assistant to=") + len("<|start|>assistant")
    rendered_call = prompt.text[start : prompt.text.index("<|call|>", start) + len("<|call|>")]
    assert rendered_call.startswith(" to=functions.get_weather<|channel|>commentary json<|message|>")
    assert prompt.text.endswith("<|start|>assistant")  # the generation prompt: the output goes on from here
    reader, _, content = _read_harmony(rendered_call, list(rendered_call))
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in reader.calls] == [
        ("get_weather", WEATHER)
    ]


# ---- parallel_tool_calls false, strict under auto ----------------------------------------------------


@pytest.mark.parametrize("chunking", ["whole", "characters", "random"])
@pytest.mark.parametrize("case_name", ["hermes-text-then-two", "llama3-python-tag-two"])
def test_at_most_one_call_is_read_when_parallel_calls_are_off(case_name: str, chunking: str):
    case = CASES[case_name]
    parser = parser_class(case.parser)(max_calls=1)
    events = [event for chunk in _chunkings(case.output)[chunking] for event in parser.feed(chunk)]
    events += parser.finish()
    assert [c.name for c in parser.calls] == [case.calls[0][0]]
    assert json.loads(parser.calls[0].arguments) == case.calls[0][1]
    assert {e.index for e in events if not isinstance(e, ContentDelta)} == {0}
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == case.content


def test_a_bare_call_is_content_where_only_tagged_calls_are_constrained():
    """Under strict the grammar constrains the calls that open with <tool_call>; a bare object at the
    start is free text to it, so it is not read as a call."""
    output = CASES["hermes-bare-json"].output
    parser = parser_class("hermes")(leading=False)
    events = parser.feed(output) + parser.finish()
    assert parser.calls == [] and "".join(e.text for e in events if isinstance(e, ContentDelta)) == output
