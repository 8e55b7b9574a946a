"""OpenAI's Responses API (/v1/responses) on both profiles, through the official openai SDK and litellm.

The tiny model has random weights, so what it writes is random text: the tests check the protocol's shapes
and the conversation's path (instructions, tool round trips, stored continuations), and make the model write
something checkable with a grammar where they need it (a forced call, a JSON schema).
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import model_entry, start_server, wait_for_log
from tests.responses_support import ROOM, TOOLS, WEATHER, create, post

# ---- one server per profile, access off -----------------------------------------------------------------


def test_a_plain_response(server):
    response = create(server)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete") and response.model == "tiny"
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text" and response.output_text == message.content[0].text
    usage = response.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 8
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_instructions_reach_the_prompt(server):
    plain = create(server, max_output_tokens=1)
    instructed = create(server, max_output_tokens=1, instructions="You answer in French, briefly.")
    assert instructed.instructions == "You answer in French, briefly."
    assert instructed.usage.input_tokens > plain.usage.input_tokens  # the system message is in the prompt


def test_max_output_tokens_makes_the_response_incomplete(server):
    response = create(
        server, max_output_tokens=1, text={"format": {"type": "json_schema", "name": "w", "schema": WEATHER}}
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete" and response.usage.output_tokens == 1


def test_json_schema_text_format(server):
    fmt = {"type": "json_schema", "name": "weather", "schema": WEATHER, "strict": True}
    response = create(server, max_output_tokens=ROOM, text={"format": fmt})
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), WEATHER)
    assert response.text.format.type == "json_schema"


def test_a_function_tool_round_trip(server):
    client = server.openai()
    first = client.responses.create(
        model="tiny",
        input="Weather in Paris?",
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=ROOM,
        temperature=0,
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    assert first.tools[0].name == "get_weather"
    # the stateless way: the output goes back in as input, with the call's result
    follow_up = [
        {"role": "user", "content": "Weather in Paris?"},
        *[item.model_dump() for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'},
    ]
    second = client.responses.create(
        model="tiny", input=follow_up, tools=TOOLS, max_output_tokens=4, temperature=0, store=False
    )
    assert second.output and second.usage.input_tokens > first.usage.input_tokens
    assert second.store is False
    with pytest.raises(openai.NotFoundError):  # store: false keeps nothing
        client.responses.retrieve(second.id)
    # a result answering no call is refused, naming the item
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model="tiny", input=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}]
        )
    assert caught.value.body["param"] == "input[0].call_id"


def test_the_stream_helper_yields_the_final_response(server):
    client = server.openai()
    with client.responses.stream(
        model="tiny",
        input="Hello",
        max_output_tokens=ROOM,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "w", "schema": WEATHER}},
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_response()
    assert events[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert events[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "response.output_text.delta" in events
    assert final.status == "completed" and final.usage.output_tokens > 0
    jsonschema.validate(json.loads(final.output_text), WEATHER)
    assert (
        client.responses.retrieve(final.id).output_text == final.output_text
    )  # streamed ones are stored too


def test_a_streamed_function_call(server):
    body = {
        "model": "tiny",
        "input": "Weather?",
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_output_tokens": ROOM,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.v1}/responses", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line[6:]) for line in lines]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    final = events[-1]["response"]
    (call,) = [item for item in final["output"] if item["type"] == "function_call"]
    assert done["arguments"] == call["arguments"] and done["name"] == "get_weather"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert deltas == call["arguments"]


def test_stored_responses_are_retrieved_continued_and_deleted(server):
    client = server.openai()
    first = create(
        server,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}],
        metadata={"run": "1"},
    )
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text and got.metadata == {"run": "1"}
    items = client.responses.input_items.list(first.id)
    assert [item.type for item in items.data] == ["message"] and items.data[0].content[0].text == "Hi there"
    second = create(server, previous_response_id=first.id, input="And then?", max_output_tokens=1)
    assert second.previous_response_id == first.id
    # the stored conversation (first input + first output) is in the second prompt
    alone = create(server, input="And then?", max_output_tokens=1)
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    deleted = client.responses.delete(first.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    for call in (
        lambda: client.responses.retrieve(first.id),
        lambda: client.responses.delete(first.id),
        lambda: create(server, previous_response_id=first.id),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert first.id in caught.value.body["message"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "web_search"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type", "file_search"),
        (
            {
                "tools": [
                    {
                        "type": "computer_use_preview",
                        "display_width": 1,
                        "display_height": 1,
                        "environment": "linux",
                    }
                ]
            },
            "tools[0].type",
            "computer_use_preview",
        ),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type", "web_search_preview"),
        ({"input": []}, "input", "empty"),
        ({"input": [{"type": "bogus"}]}, "input[0]", "bogus"),
        ({"input": [{"role": "user"}]}, "input[0].content", "Missing"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "role"),
        ({"temperature": 3}, "temperature", "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens", "max_output_tokens"),
        ({"frequency": 1}, "frequency", "Unrecognized"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", "schema"),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nope"}}}},
            "text.format.schema",
            "schema",
        ),
        ({"include": ["file_search_call.results"]}, "include", "include"),
        ({"background": True}, "background", "background"),
        ({"truncation": "auto"}, "truncation", "truncation"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": TOOLS}, "tool_choice", "nope"),
        ({"previous_response_id": "resp_unknown"}, "previous_response_id", "resp_unknown"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
            "image_url",
        ),
        ({"model": "nope"}, "model", "nope"),
    ],
)
def test_bad_input_is_an_openai_error_naming_it(server, body, param, words):
    response = post(server, {"model": "tiny", "input": "hi", "max_output_tokens": 2, **body})
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert error["param"] == param and words.lower() in error["message"].lower(), error


def test_not_json_and_unknown_ids_are_openai_errors(server):
    response = httpx.post(f"{server.v1}/responses", content=b"{nope", timeout=10)
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
    for method in ("GET", "DELETE"):
        response = httpx.request(method, f"{server.v1}/responses/resp_nope", timeout=10)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = httpx.get(f"{server.v1}/responses/resp_nope/input_items", timeout=10)
    assert response.status_code == 404


def test_litellm_responses_through_tandem(server, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    response = litellm.responses(
        model="openai/tiny",
        input="Hello",
        api_base=server.v1,
        api_key="unused",
        max_output_tokens=4,
        temperature=0,
    )
    assert response.status in ("completed", "incomplete")
    assert response.output[0].type == "message" and response.usage.output_tokens > 0


# ---- a thinking model: reasoning items ---------------------------------------------------------------------

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
    """A template that opens the reasoning: the random model never closes it, so it writes only reasoning."""
    entry = model_entry(tiny_llama, "dev", preload=True, chat_template=THINKING_TEMPLATE)
    running = start_server(
        {"profile": "dev", "profiles": {"dev": {"models": [entry]}}}, tmp_path_factory.mktemp("thinking")
    )
    yield running
    running.stop()


def test_reasoning_is_a_reasoning_item_and_effort_is_the_thinking_switch(thinking_server, server):
    client = thinking_server.openai()
    thinking = client.responses.create(
        model="tiny", input="Hi", max_output_tokens=8, temperature=0, reasoning={"effort": "high"}
    )
    (item,) = thinking.output
    assert item.type == "reasoning" and item.id.startswith("rs_") and item.content[0].text
    assert thinking.reasoning.effort == "high" and thinking.output_text == ""
    # every output token is reasoning: the random model never closes it
    assert thinking.usage.output_tokens_details.reasoning_tokens == thinking.usage.output_tokens == 8
    with client.responses.stream(model="tiny", input="Hi", max_output_tokens=8, temperature=0) as stream:
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
    assert "".join(deltas) == item.content[0].text
    (streamed,) = [e.response for e in events if e.type == "response.incomplete"]  # at max_output_tokens
    assert streamed.usage.output_tokens_details.reasoning_tokens == 8
    off = client.responses.create(
        model="tiny",
        input="Hi",
        max_output_tokens=8,
        temperature=0,
        reasoning={"effort": "none"},
        include=["reasoning.encrypted_content"],  # as Codex asks: the reasoning is in the item's content
    )
    assert [i.type for i in off.output] == ["message"] and off.output_text
    assert off.usage.output_tokens_details.reasoning_tokens == 0
    # the reasoning goes back in with the conversation it belongs to
    after = client.responses.create(
        model="tiny", input="More", previous_response_id=thinking.id, max_output_tokens=1
    )
    assert after.usage.input_tokens > thinking.usage.input_tokens
    with pytest.raises(openai.BadRequestError) as caught:  # a model that cannot think says so
        server.openai().responses.create(model="tiny", input="Hi", reasoning={"effort": "high"})
    assert "does not support thinking" in caught.value.body["message"]


def test_langchain_with_the_responses_api(server):
    from langchain_openai import ChatOpenAI

    def llm(max_tokens: int) -> ChatOpenAI:
        return ChatOpenAI(model="tiny", base_url=server.v1, api_key="unused", use_responses_api=True,
                          max_tokens=max_tokens, temperature=0, max_retries=0)  # fmt: skip

    answer = llm(4).invoke("Hello")
    assert answer.response_metadata["status"] == "incomplete" and answer.usage_metadata["output_tokens"] == 4
    chunks = list(llm(4).stream("Hello"))
    assert "".join(c.text if isinstance(c.text, str) else c.text() for c in chunks) == answer.text
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER}
    called = (
        llm(ROOM).bind_tools([tool], tool_choice="get_weather", parallel_tool_calls=False).invoke("Weather?")
    )
    assert [c["name"] for c in called.tool_calls] == ["get_weather"]
    jsonschema.validate(called.tool_calls[0]["args"], WEATHER)


def test_a_client_gone_mid_stream_aborts_the_generation(server):
    body = {
        "model": "tiny",
        "input": "Go on and on",
        "max_output_tokens": 3000,
        "temperature": 0,
        "stream": True,
    }
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", f"{server.v1}/responses", json=body, headers={"x-request-id": "resp-gone"}
        ) as r,
    ):
        lines = r.iter_lines()
        assert [line for line, _ in zip(lines, range(40), strict=False) if "output_text.delta" in line]
    aborted = wait_for_log(server, r"request resp-gone-0 aborted after (\d+) tokens")
    assert int(aborted.group(1)) < 3000
