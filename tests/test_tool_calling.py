"""Tool calling on /v1/chat/completions and /api/chat, on both profiles, through the official clients.

The tiny model has random weights and a ChatML template with no tool section: the tools are described to it
in a system message, a forced call (tool_choice required or named) is made by the grammar, and what it
writes under `auto` is random text (read with the Hermes parser). So that a call's way out can be checked
under `auto` too, a response format shaped like a call makes the model write one.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo"]},
        "unit": {"type": "string", "enum": ["C", "F"]},
    },
    "required": ["city", "unit"],
}
TIME_SCHEMA = {"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TIME_SCHEMA}
TOOLS = [
    {"type": "function", "function": {"name": name, "description": f"{name} tool", "parameters": schema}}
    for name, schema in SCHEMAS.items()
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# enough for the grammar's JSON on a random model (whitespace runs are bounded by the grammar)
ROOM = 400


def _assert_valid_call(name: str, arguments: str) -> None:
    assert name in SCHEMAS
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def _chat(server, **kwargs):
    return server.openai().chat.completions.create(
        **{"model": "tiny", "max_tokens": ROOM, "temperature": 0, "messages": ASK, **kwargs}
    )


def test_a_named_tool_choice_is_a_call_of_that_function(server):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    result = _chat(server, tools=TOOLS, tool_choice=choice).choices[0]
    assert result.finish_reason == "tool_calls"
    assert result.message.content is None
    (call,) = result.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and len(call.id) > len("call_")
    assert call.function.name == "get_weather"
    _assert_valid_call(call.function.name, call.function.arguments)


def test_a_forced_call_keeps_the_references_of_its_schema(server):
    """pydantic's schemas keep nested models under $defs; the call's grammar still finds them."""
    when = {"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}
    schema = {"type": "object", "properties": {"when": {"$ref": "#/$defs/When"}}, "required": ["when"],
              "$defs": {"When": when}}  # fmt: skip
    tools = [{"type": "function", "function": {"name": "at", "parameters": schema}}]
    for choice in ("required", {"type": "function", "function": {"name": "at"}}):
        result = _chat(server, tools=tools, tool_choice=choice).choices[0]
        assert result.finish_reason == "tool_calls"
        for call in result.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), schema)


@pytest.mark.parametrize("parallel", [False, True])
def test_required_is_one_or_more_valid_calls(server, parallel):
    result = _chat(server, tools=TOOLS, tool_choice="required", parallel_tool_calls=parallel).choices[0]
    assert result.finish_reason == "tool_calls"
    calls = result.message.tool_calls
    assert calls and (parallel or len(calls) == 1)
    assert len({call.id for call in calls}) == len(calls)
    for call in calls:
        _assert_valid_call(call.function.name, call.function.arguments)


def test_the_tools_reach_the_prompt_unless_tool_choice_is_none(server):
    plain = _chat(server, max_tokens=1)
    auto = _chat(server, max_tokens=1, tools=TOOLS)
    none = _chat(server, max_tokens=1, tools=TOOLS, tool_choice="none")
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens  # described in a system message
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    assert none.choices[0].message.tool_calls is None


def test_auto_on_a_model_without_tool_format_reads_hermes_calls(server):
    """The tiny model cannot choose to call; a response format shaped like a call makes it write one, bare
    at the start of the output, which the Hermes parser (the described format) accepts."""
    call_shape = {
        "type": "object",
        "properties": {"name": {"const": "get_time"}, "arguments": TIME_SCHEMA},
        "required": ["name", "arguments"],
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "call", "schema": call_shape}}
    result = _chat(server, tools=TOOLS, response_format=response_format).choices[0]
    assert result.finish_reason == "tool_calls"
    (call,) = result.message.tool_calls
    assert call.function.name == "get_time"
    _assert_valid_call(call.function.name, call.function.arguments)


def _reassembled(stream) -> tuple[dict[int, dict], str | None, str]:
    calls: dict[int, dict] = {}
    reason, content = None, ""
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or ():
                if delta.index not in calls:  # the first delta of a call names it
                    assert delta.id and delta.type == "function" and delta.function.name
                    calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
                else:
                    assert delta.id is None and delta.function.name is None
                calls[delta.index]["arguments"] += delta.function.arguments or ""
            reason = choice.finish_reason or reason
    return calls, reason, content


def test_streamed_calls_reassemble_to_the_unary_answer(server):
    kwargs = {"tools": TOOLS, "tool_choice": "required", "seed": 7}
    unary = _chat(server, **kwargs).choices[0].message.tool_calls
    calls, reason, content = _reassembled(_chat(server, stream=True, **kwargs))
    assert reason == "tool_calls" and content == ""
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in unary
    ]


def test_the_sdk_stream_helper_reassembles_a_call(server):
    choice = {"type": "function", "function": {"name": "get_time"}}
    with server.openai().chat.completions.stream(
        model="tiny", messages=ASK, max_tokens=ROOM, temperature=0, tools=TOOLS, tool_choice=choice
    ) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    _assert_valid_call(call.function.name, call.function.arguments)


def _round_trip(result_text: str, arguments: str = '{"city": "Paris", "unit": "C"}') -> list[dict]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result_text},
    ]


def test_a_tool_result_and_the_call_before_it_reach_the_prompt(server):
    short = _chat(server, messages=_round_trip("21"), tools=TOOLS, max_tokens=8)
    longer = _chat(server, messages=_round_trip("21 degrees, sunny, a light wind"), tools=TOOLS, max_tokens=8)
    longer_call = _chat(
        server, messages=_round_trip("21", '{"city": "Paris", "unit": "C", "x": "a much longer call"}'),
        tools=TOOLS, max_tokens=8,
    )  # fmt: skip
    assert short.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert longer.usage.prompt_tokens > short.usage.prompt_tokens
    assert longer_call.usage.prompt_tokens > short.usage.prompt_tokens


def _error(server, body: dict) -> dict:
    response = httpx.post(f"{server.v1}/chat/completions", json={"model": "tiny", "max_tokens": 4, **body})
    assert response.status_code == 400, response.text
    return response.json()["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "messages": ASK,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#"}}}],
            },
            "tools[0].function.parameters",
        ),
        (
            {
                "messages": ASK,
                "tools": TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice",
        ),
        ({"messages": ASK, "tool_choice": "required"}, "tool_choice"),
        ({"messages": _round_trip("21")[:1] + _round_trip("21")[2:]}, "messages[1].tool_call_id"),
        ({"messages": [*ASK, {"role": "tool", "content": "21"}]}, "messages[1].tool_call_id"),
        ({"messages": ASK, "tools": [*TOOLS, TOOLS[0]]}, "tools[2]"),
        (
            {
                "messages": ASK,
                "tools": TOOLS,
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "tool_choice",
        ),
    ],
)
def test_tool_errors_name_the_param(server, body, param):
    assert _error(server, body)["param"] == param


def test_a_tool_error_through_the_sdk(server):
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(server, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert caught.value.body["param"] == "tool_choice"
    assert "nope" in caught.value.body["message"]


# ---- LangChain -----------------------------------------------------------------------------------


def _langchain(server):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="tiny", base_url=server.v1, api_key="unused", temperature=0, max_tokens=ROOM,
                      max_retries=0)  # fmt: skip


def test_langchain_bind_tools_and_a_two_step_loop(server):
    from langchain_core.messages import HumanMessage, ToolMessage

    llm = _langchain(server).bind_tools(TOOLS, tool_choice="get_weather")
    messages = [HumanMessage("What is the weather in Paris?")]
    answer = llm.invoke(messages)
    (call,) = answer.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER_SCHEMA)
    messages += [answer, ToolMessage("21 degrees", tool_call_id=call["id"])]
    final = _langchain(server).bind_tools(TOOLS).invoke(messages)  # the loop's second step: answer in text
    assert isinstance(final.content, str)


def test_langchain_structured_output_through_function_calling(server):
    from typing import Literal

    from pydantic import BaseModel

    class Weather(BaseModel):
        city: Literal["Paris", "Oslo"]
        warm: bool

    result = _langchain(server).with_structured_output(Weather, method="function_calling").invoke("Weather?")
    assert isinstance(result, Weather)


# ---- Ollama --------------------------------------------------------------------------------------


def test_ollama_client_reads_a_call_with_object_arguments(server):
    import ollama

    call_shape = {
        "type": "object",
        "properties": {"name": {"const": "get_weather"}, "arguments": WEATHER_SCHEMA},
        "required": ["name", "arguments"],
    }
    client = ollama.Client(host=server.base_url)
    options = {"temperature": 0, "num_predict": ROOM}
    response = client.chat(model="tiny", messages=ASK, tools=TOOLS, format=call_shape, options=options)
    (call,) = response.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(dict(call.function.arguments), WEATHER_SCHEMA)
    streamed = [
        c for part in client.chat(model="tiny", messages=ASK, tools=TOOLS, format=call_shape, options=options,
                                  stream=True)
        for c in part.message.tool_calls or ()
    ]  # fmt: skip
    assert [(c.function.name, dict(c.function.arguments)) for c in streamed] == [
        (call.function.name, dict(call.function.arguments))
    ]


def test_ollama_round_trip_reaches_the_prompt(server):
    import ollama

    client = ollama.Client(host=server.base_url)

    def evaluated(result: str) -> int:
        messages = [
            *ASK,
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}]},
            {"role": "tool", "tool_name": "get_weather", "content": result},
        ]  # fmt: skip
        return client.chat(
            model="tiny", messages=messages, tools=TOOLS, options={"num_predict": 2}
        ).prompt_eval_count

    assert evaluated("21 degrees, sunny, a light wind") > evaluated("21")


def test_ollama_tool_errors(server):
    def error(body: dict) -> str:
        response = httpx.post(f"{server.base_url}/api/chat", json={"model": "tiny", "stream": False, **body})
        assert response.status_code == 400, response.text
        return response.json()["error"]

    assert "answers no open tool call" in error({"messages": [*ASK, {"role": "tool", "content": "21"}]})
    bad = [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#"}}}]
    assert "Invalid schema for function 'f'" in error({"messages": ASK, "tools": bad})


# ---- what local models refuse, and the settings --------------------------------------------------


def test_images_to_a_local_model_are_refused(server):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    content = [{"type": "text", "text": "What is this?"}, image]
    error = _error(server, {"messages": [{"role": "user", "content": content}]})
    assert error["message"] == "model 'tiny' does not accept images" and error["param"] == "messages"
    message = {"role": "user", "content": "x", "images": ["iVBORw0KGgo="]}
    body = {"model": "tiny", "stream": False, "messages": [message]}
    response = httpx.post(f"{server.base_url}/api/chat", json=body)
    assert response.status_code == 400 and "does not accept images" in response.json()["error"]


def test_think_on_a_model_that_cannot_think_is_refused(server):
    body = {"model": "tiny", "stream": False, "think": True, "messages": ASK}
    response = httpx.post(f"{server.base_url}/api/chat", json=body)
    assert response.status_code == 400 and "does not support thinking" in response.json()["error"]
    response = httpx.post(
        f"{server.base_url}/api/chat", json={**body, "think": False, "options": {"num_predict": 1}}
    )
    assert response.status_code == 200  # thinking off is what such a model does anyway


def test_reasoning_effort_maps_to_the_thinking_switch(server):
    """OpenAI's reasoning_effort is the template's thinking switch: refused where the model cannot think,
    "none" accepted everywhere, an unknown level a 400 naming the field."""
    body = {"model": "tiny", "messages": ASK, "max_tokens": 1}
    refused = httpx.post(f"{server.v1}/chat/completions", json={**body, "reasoning_effort": "high"})
    assert refused.status_code == 400 and "does not support thinking" in refused.json()["error"]["message"]
    off = httpx.post(f"{server.v1}/chat/completions", json={**body, "reasoning_effort": "none"})
    assert off.status_code == 200, off.text
    bad = httpx.post(f"{server.v1}/chat/completions", json={**body, "reasoning_effort": "extreme"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "reasoning_effort"


def test_an_unknown_tool_parser_is_a_config_error():
    from pydantic import ValidationError

    from gateway.config import ModelSpec

    with pytest.raises(ValidationError, match=r"unknown tool_parser 'nope'.*hermes"):
        ModelSpec(name="m", backend="llamacpp", path="/m.gguf", tool_parser="nope")
    assert (
        ModelSpec(name="m", backend="llamacpp", path="/m.gguf", tool_parser="mistral").tool_parser
        == "mistral"
    )


def test_a_template_without_tools_gets_them_described_and_earlier_calls_as_text():
    from backends.base import RenderOptions
    from backends.chat_template import ChatTemplate
    from backends.conversation import Conversation, Message, Role, ToolCall, ToolDefinition
    from backends.tiny_model.tokenizer_files import CHAT_TEMPLATE
    from backends.tool_prompt import render_prompt

    call = ToolCall("call_1", "get_time", '{"utc": true}')
    conversation = Conversation(
        (
            Message.of_text(Role.USER, "Time?"),
            Message(Role.ASSISTANT, tool_calls=(call,)),
            Message(Role.TOOL, Message.of_text(Role.TOOL, "12:00").content, tool_call_id="call_1"),
        ),
        (ToolDefinition("get_time", "the time", json.dumps(TIME_SCHEMA)),),
    )
    prompt = render_prompt(ChatTemplate(CHAT_TEMPLATE), conversation, RenderOptions(), lambda t: [0], "tiny")
    assert prompt.tools_described and prompt.tool_format is None
    assert prompt.text.startswith("<|im_start|>system\n# Tools\n")
    assert '{"type": "function", "function": {"name": "get_time", "description": "the time"' in prompt.text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_time", "arguments": {"utc": true}}\n</tool_call>'
        in (prompt.text)
    )
    assert "<|im_start|>tool\n12:00<|im_end|>" in prompt.text


# ---- a real model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_server(smollm2_gguf, tmp_path_factory):
    from tests.conftest import start_server

    entry = {"name": "smollm2", "backend": "llamacpp", "path": str(smollm2_gguf), "context_length": 2048,
             "preload": True}  # fmt: skip
    running = start_server({"profile": "dev", "profiles": {"dev": {"models": [entry]}}},
                           tmp_path_factory.mktemp("smollm2-tools"))  # fmt: skip
    yield running
    running.stop()


def test_smollm2_forced_call_has_valid_arguments(smollm2_server):
    city = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
    }
    weather = {"name": "get_weather", "description": "Current weather in a city", "parameters": city}
    tools = [{"type": "function", "function": weather}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        result = (
            smollm2_server.openai()
            .chat.completions.create(
                model="smollm2", messages=ASK, tools=tools, tool_choice=choice, temperature=0, max_tokens=100
            )
            .choices[0]
        )
        assert result.finish_reason == "tool_calls"
        (call,) = result.message.tool_calls
        assert call.function.name == "get_weather"
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, city)
        assert "paris" in arguments["city"].lower()  # a real model reads the question


# ---- reasoning ----------------------------------------------------------------------------------------


def test_reasoning_is_split_off_before_calls_are_read():
    from backends.base import Prompt
    from backends.conversation import Conversation, Message, Role, ToolDefinition
    from gateway.tool_calls import ReasoningText, tool_plan

    conversation = Conversation((Message.of_text(Role.USER, "Time?"),), (ToolDefinition("get_time"),))
    prompt = Prompt([0], "", "hermes", reasoning=True)
    plan = tool_plan(conversation, prompt, None)
    assert plan is not None and plan.parser == "hermes" and plan.reasoning and not plan.reasoning_open
    reader = plan.new_reader()
    call = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    output = f"<think>\nThe user wants the time.\n</think>\n\n{call}"
    events = [event for i in range(0, len(output), 3) for event in reader.feed(output[i : i + 3])]
    events += reader.finish()
    assert "".join(e.text for e in events if isinstance(e, ReasoningText)) == "\nThe user wants the time.\n"
    assert reader.content == "" and [(c.name, c.arguments) for c in reader.calls] == [("get_time", "{}")]


THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is not defined or enable_thinking %}{{ '<think>\\n' }}"
    "{% else %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def thinking_server(tiny_llama, tmp_path_factory):
    """The tiny model with a template whose generation prompt opens the reasoning (as DeepSeek-R1's and,
    with thinking on, Qwen3's): the random model never closes it, so all it writes is reasoning."""
    from tests.conftest import model_entry, start_server

    entry = model_entry(tiny_llama, "dev", preload=True, chat_template=THINKING_TEMPLATE)
    running = start_server({"profile": "dev", "profiles": {"dev": {"models": [entry]}}},
                           tmp_path_factory.mktemp("thinking"))  # fmt: skip
    yield running
    running.stop()


def test_a_thinking_models_reasoning_is_apart_from_its_answer(thinking_server):
    import ollama

    client = ollama.Client(host=thinking_server.base_url)
    options = {"temperature": 0, "num_predict": 12}
    thinking = client.chat(model="tiny", messages=ASK, think=True, options=options)
    assert thinking.message.thinking and thinking.message.content == ""
    plain = client.chat(model="tiny", messages=ASK, think=False, options=options)
    assert plain.message.content and not plain.message.thinking
    streamed = list(client.chat(model="tiny", messages=ASK, think=True, options=options, stream=True))
    assert "".join(part.message.thinking or "" for part in streamed) == thinking.message.thinking

    openai_client = thinking_server.openai()
    answer = openai_client.chat.completions.create(model="tiny", messages=ASK, temperature=0, max_tokens=12)
    assert answer.choices[0].message.model_extra["reasoning_content"] == thinking.message.thinking
    assert answer.choices[0].message.content == ""
    stream = openai_client.chat.completions.create(
        model="tiny", messages=ASK, temperature=0, max_tokens=12, stream=True
    )
    pieces = [(c.choices[0].delta.model_extra or {}).get("reasoning_content") for c in stream if c.choices]
    assert "".join(p or "" for p in pieces) == thinking.message.thinking
