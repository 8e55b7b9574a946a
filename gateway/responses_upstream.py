"""A Responses API request served by a remote (OpenAI-compatible) upstream: the conversation sent as the
upstream's chat request, its answer read back as the same output events a local model's reader makes.

So a remote model's response is stored, continued, streamed and numbered exactly as a local one's; limits
and usage are settled as for every remote request (gateway.remote_serving).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from backends.conversation import Conversation, ToolChoiceKind
from backends.template_inputs import template_tools
from backends.tools.events import ContentDelta, ToolCallArguments, ToolCallBegin
from gateway.deps import CallContext
from gateway.openai_protocol import Usage
from gateway.remote_serving import (
    admit_remote,
    open_stream,
    release_stream,
    token_counts,
    upstream_reasoning_tokens,
    upstream_usage,
)
from gateway.responses_output import Piece
from gateway.responses_protocol import ResponseRequest, TextFormatJSONObject, TextFormatJSONSchema
from gateway.routing import RemoteModel
from gateway.tool_calls import OutputEvent, ReasoningText
from gateway.upstream_messages import openai_message


def upstream_payload(body: ResponseRequest, conversation: Conversation) -> dict[str, Any]:
    payload: dict[str, Any] = {"messages": [openai_message(m) for m in conversation.messages]}
    if conversation.tools:
        payload["tools"] = template_tools(conversation)
        choice = conversation.tool_choice
        payload["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}}
            if choice.kind is ToolChoiceKind.NAMED
            else choice.kind.value
        )
        payload["parallel_tool_calls"] = conversation.parallel_tool_calls
    text_format = body.text.format
    if isinstance(text_format, TextFormatJSONObject):
        payload["response_format"] = {"type": "json_object"}
    elif isinstance(text_format, TextFormatJSONSchema):
        schema = {"name": text_format.name, "schema": text_format.schema_, "strict": bool(text_format.strict)}
        payload["response_format"] = {"type": "json_schema", "json_schema": schema}
    fields = {
        "max_tokens": body.max_output_tokens, "temperature": body.temperature, "top_p": body.top_p,
        "reasoning_effort": body.reasoning.effort if body.reasoning is not None else None, "user": body.user,
    }  # fmt: skip
    return payload | {name: value for name, value in fields.items() if value is not None}


class _Calls:
    """OpenAI's call deltas (id and name first, then argument fragments, by index) as reader events."""

    def __init__(self) -> None:
        self._begun: set[int] = set()

    def events(self, delta: dict[str, Any]) -> list[OutputEvent]:
        events: list[OutputEvent] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            events.append(ReasoningText(reasoning))
        if delta.get("content"):
            events.append(ContentDelta(delta["content"]))
        for piece in delta.get("tool_calls") or []:
            index = int(piece.get("index") or 0)
            function = piece.get("function") or {}
            if index not in self._begun:
                self._begun.add(index)
                events.append(ToolCallBegin(index, function.get("name") or "", piece.get("id") or None))
            if function.get("arguments"):
                events.append(ToolCallArguments(index, function["arguments"]))
        return events


async def remote_whole(
    call: CallContext, remote: RemoteModel, payload: dict[str, Any], requested: str
) -> Piece:
    admission = await admit_remote(call, payload)
    remote.in_flight += 1
    usage: Usage | None = None
    try:
        data = await remote.upstream().chat(requested, payload)
        usage = upstream_usage(data)
    finally:
        remote.in_flight -= 1
        await admission.settle(*token_counts(usage))
    choice = (data.get("choices") or [{}])[0]
    message = dict(choice.get("message") or {})
    # a whole message is one delta whose calls all arrive at once
    message["tool_calls"] = [{**c, "index": i} for i, c in enumerate(message.get("tool_calls") or [])]
    reason = choice.get("finish_reason") or "stop"
    return Piece(_Calls().events(message), reason, usage, upstream_reasoning_tokens(data))


async def remote_pieces(
    call: CallContext, remote: RemoteModel, payload: dict[str, Any], requested: str
) -> AsyncIterator[Piece]:
    """Opens the upstream's stream at once (a refusal is still a status code), then yields its pieces."""
    admission, chunks = await open_stream(call, remote, payload, requested)

    async def pieces() -> AsyncIterator[Piece]:
        calls, usage, reason, reasoning_tokens = _Calls(), None, None, 0
        try:
            async for chunk in chunks:
                usage = upstream_usage(chunk) or usage
                reasoning_tokens = upstream_reasoning_tokens(chunk) or reasoning_tokens
                for choice in chunk.get("choices") or []:
                    reason = choice.get("finish_reason") or reason
                    events = calls.events(choice.get("delta") or {})
                    if events:
                        yield Piece(events)
            yield Piece([], reason or "stop", usage, reasoning_tokens)
        finally:
            await release_stream(remote, chunks, admission, *token_counts(usage))

    return pieces()
