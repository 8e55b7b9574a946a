"""The Responses API's seams in process, without a server: items into the Conversation, reader events into
output items and stream events, and the in-memory store's retention and namespaces."""

from __future__ import annotations

import asyncio

from backends.conversation import Role
from backends.tools.events import ContentDelta, ToolCallArguments, ToolCallBegin
from gateway.auth import Principal
from gateway.response_store import MemoryResponseStore, StoredResponse, namespace
from gateway.responses_conversation import input_items, response_conversation
from gateway.responses_objects import ResponseObject
from gateway.responses_output import OutputBuilder
from gateway.responses_protocol import ResponseRequest, TextConfig
from gateway.tool_calls import ReasoningText


def test_an_assistant_turns_items_are_one_message_and_results_find_their_calls():
    body = ResponseRequest.model_validate(
        {
            "model": "m",
            "instructions": "Be brief.",
            "tools": [{"type": "function", "name": "f"}, {"type": "function", "name": "g"}],
            "input": [
                {"role": "user", "content": "Hi"},
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [],
                    "content": [{"type": "reasoning_text", "text": "hm"}],
                },
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Let me look."}],
                },
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"x": 1}'},
                {"type": "function_call_output", "call_id": "c2", "output": "two"},
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "input_text", "text": "one"}],
                },
                {"role": "developer", "content": "Now answer."},
            ],
        }
    )
    conversation = response_conversation(body, [], input_items(body))
    roles = [m.role for m in conversation.messages]
    assert roles == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.TOOL, Role.TOOL, Role.DEVELOPER]
    assistant = conversation.messages[2]
    assert assistant.reasoning == "hm" and assistant.text == "Let me look."
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [
        ("c1", "f", "{}"),
        ("c2", "g", '{"x": 1}'),
    ]
    results = [(m.tool_call_id, m.name, m.text) for m in conversation.messages[3:5]]
    assert results == [("c2", "g", "two"), ("c1", "f", "one")]


def test_output_items_and_events_follow_the_order_the_model_wrote():
    builder = OutputBuilder()
    events = builder.feed(
        [
            ReasoningText("think"),
            ContentDelta("Hel"),
            ContentDelta("lo"),
            ToolCallBegin(0, "f", "call_1"),
            ToolCallArguments(0, '{"a"'),
            ToolCallArguments(0, ": 1}"),
        ]
    )
    events += builder.finish("incomplete")
    assert [item.type for item in builder.items] == ["reasoning", "message", "function_call"]
    reasoning, message, call = builder.items
    assert reasoning.content[0].text == "think" and message.content[0].text == "Hello"
    assert call.arguments == '{"a": 1}' and call.call_id == "call_1"
    assert (reasoning.status, message.status, call.status) == ("completed", "completed", "incomplete")
    assert [e.type for e in events] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert [getattr(e, "output_index", None) for e in events if e.type.endswith(".delta")] == [0, 1, 1, 2, 2]
    empty = OutputBuilder()
    empty.finish("completed")
    assert [(i.type, i.content[0].text) for i in empty.items] == [("message", "")]  # type: ignore[union-attr]


def _record(response_id: str, owner: str) -> StoredResponse:
    response = ResponseObject(
        id=response_id,
        created_at=0,
        status="completed",
        model="m",
        parallel_tool_calls=True,
        store=True,
        text=TextConfig(),
        tool_choice="auto",
        tools=[],
    )
    return StoredResponse(namespace=owner, response=response, input_items=[], history=[])


def test_the_memory_store_keeps_responses_for_the_retention_and_per_namespace():
    now = [0.0]
    store = MemoryResponseStore(10, clock=lambda: now[0])
    team = namespace(Principal(key_id="k1", team="t", is_master=False))
    alone = namespace(Principal(key_id="k2", team=None, is_master=False))
    assert team != alone != namespace(Principal.anonymous())

    async def main() -> None:
        await store.put(_record("resp_a", team))
        assert (await store.get(team, "resp_a")) is not None
        assert await store.get(alone, "resp_a") is None and not await store.delete(alone, "resp_a")
        now[0] = 9.9
        await store.put(_record("resp_b", team))
        now[0] = 10.0
        assert await store.get(team, "resp_a") is None  # expired
        assert await store.get(team, "resp_b") is not None
        await store.put(_record("resp_c", team))  # drops the expired ones
        assert list(store._records) == ["resp_b", "resp_c"]
        assert await store.delete(team, "resp_b") and await store.get(team, "resp_b") is None

    asyncio.run(main())
