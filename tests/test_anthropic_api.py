"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) through the official anthropic SDK and
litellm's anthropic/ provider, on both profiles: answers, streams, tools, token counts, bad input in
Anthropic's envelope, and a Claude-Code-style stream."""

from __future__ import annotations

import anthropic
import httpx
import jsonschema
import pytest

from tests.anthropic_support import (
    ASK,
    GREEDY,
    PNG,
    ROOM,
    SCHEMAS,
    TOOLS,
    WEATHER,
    create,
    envelope,
    post,
    prompt_tokens,
    sdk_client,
    sse_events,
)


@pytest.fixture
def client(server) -> anthropic.Anthropic:
    return sdk_client(server.base_url)


# ---- the SDK on both profiles ------------------------------------------------------------------------------


def test_create_answers_a_message(client):
    message = create(client, system="Answer briefly.", metadata={"user_id": "u-1"})
    assert message.type == "message" and message.role == "assistant" and message.model == "tiny"
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"] and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    assert 0 < message.usage.output_tokens <= 8 and message.usage.input_tokens > 0
    as_blocks = create(client, system=[{"type": "text", "text": "Answer briefly."}])
    assert prompt_tokens(as_blocks.usage) == prompt_tokens(message.usage)
    assert prompt_tokens(create(client).usage) < prompt_tokens(message.usage)  # the system prompt counts


def test_a_stop_sequence_stops_the_real_model_and_is_named(client):
    free = create(client, max_tokens=24).content[0].text
    assert len(free) >= 8, free
    stop = free[len(free) // 2 : len(free) // 2 + 3]  # greedy: the same text comes again, up to the stop
    before = free[: free.index(stop)]
    assert before, free
    message = create(client, max_tokens=24, stop_sequences=["\u2603never", stop])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", stop)
    assert [block.text for block in message.content] == [before]
    with client.messages.stream(
        **{"model": "tiny", "max_tokens": 24, "messages": ASK, **GREEDY, "stop_sequences": [stop]}
    ) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)
    assert [block.text for block in final.content] == [before]


def test_stream_helper_yields_the_final_message(client):
    unary = create(client, max_tokens=12)
    with client.messages.stream(model="tiny", max_tokens=12, messages=ASK, **GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == unary.content[0].text
    assert final.stop_reason == unary.stop_reason
    assert (prompt_tokens(final.usage), final.usage.output_tokens) == (
        prompt_tokens(unary.usage),
        unary.usage.output_tokens,
    )


def test_tool_choice_tool_is_a_valid_call_and_round_trips(client):
    forced = create(client, tools=TOOLS, tool_choice={"type": "tool", "name": "get_weather"}, max_tokens=ROOM)
    assert forced.stop_reason == "tool_use"
    (call,) = [block for block in forced.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.id
    jsonschema.validate(call.input, WEATHER)
    history = [*ASK, {"role": "assistant", "content": [block.model_dump() for block in forced.content]}]

    def answer(result: str, is_error: bool = False):
        block = {"type": "tool_result", "tool_use_id": call.id, "content": result, "is_error": is_error}
        return create(client, tools=TOOLS, messages=[*history, {"role": "user", "content": [block]}])

    short, longer = answer("21"), answer("21 degrees, sunny, a light wind")
    assert prompt_tokens(longer.usage) > prompt_tokens(short.usage) > prompt_tokens(forced.usage)
    assert prompt_tokens(answer("21", is_error=True).usage) > prompt_tokens(short.usage)
    unknown = {"type": "tool_result", "tool_use_id": "toolu_nope", "content": "21"}
    with pytest.raises(anthropic.BadRequestError, match="answers no tool_use block"):
        create(client, tools=TOOLS, messages=[*history, {"role": "user", "content": [unknown]}])


def test_tool_choice_any_calls_one_of_the_tools_and_streams_it(client):
    kwargs = {
        "tools": TOOLS,
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "max_tokens": ROOM,
    }
    unary = create(client, **kwargs)
    (call,) = [block for block in unary.content if block.type == "tool_use"]
    jsonschema.validate(call.input, SCHEMAS[call.name])
    with client.messages.stream(model="tiny", messages=ASK, **GREEDY, **kwargs) as stream:
        final = stream.get_final_message()
    (streamed,) = [block for block in final.content if block.type == "tool_use"]
    assert (streamed.name, streamed.input) == (call.name, call.input) and final.stop_reason == "tool_use"


def test_count_tokens_is_the_input_tokens_of_the_same_request(client):
    prompt = {"system": [{"type": "text", "text": "You are terse."}], "tools": TOOLS, "messages": ASK}
    counted = client.messages.count_tokens(model="tiny", **prompt)
    assert counted.input_tokens == prompt_tokens(create(client, **prompt, max_tokens=1).usage)
    assert client.messages.count_tokens(model="tiny", messages=ASK).input_tokens < counted.input_tokens


def test_thinking_on_a_model_that_cannot_think_is_refused(client):
    with pytest.raises(anthropic.BadRequestError, match="does not support thinking"):
        create(client, max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024})
    assert create(client, thinking={"type": "disabled"}).content


@pytest.mark.parametrize(
    ("body", "status", "kind", "needle"),
    [
        ({"messages": ASK}, 400, "invalid_request_error", "max_tokens"),
        ({"max_tokens": 4, "messages": [{"role": "system", "content": "hi"}]}, 400, "invalid_request_error",
         "role"),
        ({"max_tokens": 4, "messages": []}, 400, "invalid_request_error", "messages"),
        ({"max_tokens": 4, "messages": ASK, "temperature": 1.5}, 400, "invalid_request_error", "temperature"),
        ({"max_tokens": 4, "messages": ASK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
         400, "invalid_request_error", "web_search_20250305"),
        ({"max_tokens": 4, "messages": ASK, "tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}},
         400, "invalid_request_error", "nope"),
        ({"max_tokens": 4, "messages": ASK, "tool_choice": {"type": "any"}}, 400, "invalid_request_error",
         "at least one tool"),
        ({"max_tokens": 4, "messages": ASK, "output_config": {"effort": "low"}}, 400, "invalid_request_error",
         "output_config"),
        ({"max_tokens": 4, "model": "nope", "messages": ASK}, 404, "not_found_error", "nope"),
        ({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image", "source": PNG}]}]},
         400, "invalid_request_error", "does not accept images"),
        ({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
         400, "invalid_request_error", "document"),
    ],
)  # fmt: skip
def test_bad_input_is_an_anthropic_error(server, body, status, kind, needle):
    for stream in (False, True):
        response = post(f"{server.v1}/messages", json={"model": "tiny", "stream": stream, **body})
        assert needle in envelope(response, status, kind)


def test_errors_outside_the_body_use_the_envelope_too(server):
    envelope(post(f"{server.v1}/messages", content=b"{not json"), 400, "invalid_request_error")
    envelope(httpx.get(f"{server.v1}/messages"), 405, "invalid_request_error")
    counted = post(f"{server.v1}/messages/count_tokens", json={"model": "tiny", "max_tokens": 3,
                                                                     "messages": ASK})  # fmt: skip
    assert "max_tokens" in envelope(counted, 400, "invalid_request_error")
    with pytest.raises(anthropic.NotFoundError):
        sdk_client(server.base_url).messages.create(model="nope", max_tokens=1, messages=ASK)


CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
    "fine-grained-tool-streaming-2025-05-14",
    "x-api-key": "unused",
    "user-agent": "claude-cli/2.0.0 (external, cli)",
    "x-app": "cli",
}


def _claude_code_body(max_tokens: int) -> dict:
    cached = {"type": "ephemeral"}
    return {
        "model": "tiny",
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 1,
        "metadata": {"user_id": "user_abc_account__session_123"},
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": cached},
            {"type": "text", "text": "You are an interactive CLI tool that helps users with software tasks."},
        ],
        "tools": [
            {"name": "Bash", "description": "Runs a bash command",
             "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                              "required": ["command"], "additionalProperties": False,
                              "$schema": "http://json-schema.org/draft-07/schema#"}},
            {"name": "Read", "description": "Reads a file", "cache_control": cached,
             "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                              "required": ["file_path"]}},
        ],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>Be careful.</system-reminder>"},
            {"type": "text", "text": "list the files", "cache_control": cached},
        ]}],
    }  # fmt: skip


def test_a_claude_code_style_stream(server):
    body = _claude_code_body(24)
    with httpx.stream("POST", f"{server.v1}/messages", json=body, headers=CLAUDE_CODE_HEADERS,
                      timeout=60) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    started = [data["index"] for name, data in events if name == "content_block_start"]
    stopped = [data["index"] for name, data in events if name == "content_block_stop"]
    assert started == stopped == list(range(len(started)))
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
    assert 0 < delta["usage"]["output_tokens"] <= 24
    assert events[0][1]["message"]["usage"]["input_tokens"] == delta["usage"]["input_tokens"] > 0


def test_litellm_anthropic_provider(server):
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    response = litellm.completion(model="anthropic/tiny", api_base=server.base_url, api_key="unused",
                                  messages=ASK, max_tokens=6, temperature=0)  # fmt: skip
    assert response.choices[0].message.content
    assert response.usage.completion_tokens <= 6 and response.usage.prompt_tokens > 0
    streamed = litellm.completion(model="anthropic/tiny", api_base=server.base_url, api_key="unused",
                                  messages=ASK, max_tokens=6, temperature=0, stream=True)  # fmt: skip
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed)
    assert text == response.choices[0].message.content
