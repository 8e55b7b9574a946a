"""OpenAI chat requests and Ollama /api/chat requests as the protocol-neutral Conversation.

Everything a message carries reaches it (content parts, an assistant's tool calls, a tool result's call id
or function name); what cannot be made sense of is a 400 naming the field, never dropped. Checking a tool's
parameters compiles them with xgrammar (imported on first use, seconds): call these off the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from backends.base import StructuredOutput
from backends.conversation import (
    ContentPart,
    Conversation,
    ImagePart,
    Message,
    Role,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolChoiceKind,
    ToolDefinition,
)
from backends.structured import InvalidStructuredOutputError, validate
from gateway.errors import bad_request
from gateway.ollama_protocol import ChatRequest, OllamaMessage
from gateway.openai_protocol import ChatCompletionRequest, ChatMessageIn, NamedToolChoice
from gateway.openai_protocol import ImagePart as OpenAIImagePart

_NO_PARAMETERS = '{"type": "object", "properties": {}}'


def checked_tool(
    name: str,
    description: str | None,
    parameters: dict[str, Any] | None,
    strict: bool,
    *,
    param: str,
    what: str = "schema for function",
) -> ToolDefinition:
    """A tool whose parameters are a JSON schema the grammar compiler takes (every protocol's tools: chat,
    Ollama, Responses, Anthropic); else a 400 naming `param`. No parameters: an object with none."""
    if parameters is None:
        return ToolDefinition(name, description, _NO_PARAMETERS, strict)
    schema = json.dumps(parameters)  # no sort_keys: the properties are generated in the order given
    try:
        validate(StructuredOutput("json_schema", schema))
    except InvalidStructuredOutputError as exc:
        raise bad_request(f"Invalid {what} '{name}': {exc}", param=param) from None
    return ToolDefinition(name, description, schema, strict)


def _tool(
    name: str, description: str | None, parameters: dict[str, Any] | None, strict: bool, index: int
) -> ToolDefinition:
    return checked_tool(name, description, parameters, strict, param=f"tools[{index}].function.parameters")


def _check_unique(tools: Sequence[ToolDefinition], param: str) -> None:
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if tool.name in seen:
            raise bad_request(f"Duplicate function name '{tool.name}' in tools.", param=f"{param}[{i}]")
        seen.add(tool.name)


def _tool_choice(choice: str | NamedToolChoice | None, tools: Sequence[ToolDefinition]) -> ToolChoice:
    if choice is None:
        return ToolChoice(ToolChoiceKind.AUTO)
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if not any(tool.name == name for tool in tools):
            known = ", ".join(tool.name for tool in tools) or "none"
            raise bad_request(
                f"tool_choice names function '{name}', which is not among the tools (known: {known}).",
                param="tool_choice",
            )
        return ToolChoice(ToolChoiceKind.NAMED, name)
    kind = ToolChoiceKind(choice)
    if kind is ToolChoiceKind.REQUIRED and not tools:
        raise bad_request("tool_choice 'required' needs at least one tool in 'tools'.", param="tool_choice")
    return ToolChoice(kind)


def _openai_content(message: ChatMessageIn) -> tuple[ContentPart, ...]:
    if message.content is None:
        return ()
    if isinstance(message.content, str):
        return (TextPart(message.content),) if message.content else ()
    parts: list[ContentPart] = []
    for part in message.content:
        if isinstance(part, OpenAIImagePart):
            parts.append(ImagePart(part.image_url.url, part.image_url.detail))
        else:
            parts.append(TextPart(part.text))
    return tuple(parts)


def _openai_message(message: ChatMessageIn, index: int, call_ids: set[str]) -> Message:
    role = Role(message.role)
    param = f"messages[{index}]"
    if message.tool_calls and role is not Role.ASSISTANT:
        raise bad_request("Only assistant messages carry 'tool_calls'.", param=f"{param}.tool_calls")
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ())
    if role is Role.TOOL:
        if message.tool_call_id is None:
            raise bad_request("A tool message needs 'tool_call_id'.", param=f"{param}.tool_call_id")
        if message.tool_call_id not in call_ids:
            raise bad_request(
                f"Tool message with tool_call_id '{message.tool_call_id}' answers no tool call of an earlier "
                "assistant message.",
                param=f"{param}.tool_call_id",
            )
    call_ids.update(call.id for call in calls)
    name = message.name if role is Role.TOOL else None  # a user's or assistant's `name` is no template input
    return Message(role, _openai_content(message), calls, message.tool_call_id, name)


def openai_conversation(body: ChatCompletionRequest) -> Conversation:
    tools = tuple(
        _tool(t.function.name, t.function.description, t.function.parameters, bool(t.function.strict), i)
        for i, t in enumerate(body.tools or ())
    )
    _check_unique(tools, "tools")
    call_ids: set[str] = set()
    messages = tuple(_openai_message(m, i, call_ids) for i, m in enumerate(body.messages))
    parallel = True if body.parallel_tool_calls is None else body.parallel_tool_calls
    effort = body.reasoning_effort
    thinking = None if effort is None else effort not in ("none", "minimal")
    level = effort if effort in ("low", "medium", "high") else None
    return Conversation(messages, tools, _tool_choice(body.tool_choice, tools), parallel, thinking, level)


def _ollama_message(
    message: OllamaMessage, index: int, open_calls: list[ToolCall], count: list[int]
) -> Message:
    """open_calls: the calls of earlier assistant messages no tool message has answered yet."""
    role = Role(message.role)
    param = f"messages[{index}]"
    if message.tool_calls and role is not Role.ASSISTANT:
        raise bad_request(f"{param}: only assistant messages carry tool_calls", param=f"{param}.tool_calls")
    calls = []
    for call in message.tool_calls or ():
        count[0] += 1
        arguments = json.dumps(call.function.arguments, ensure_ascii=False)
        # Ollama's calls have no id; templates that need one get one
        calls.append(ToolCall(call.id or f"call_{count[0]}", call.function.name, arguments))
    call_id: str | None = None
    tool_name: str | None = None
    if role is Role.TOOL:
        # Ollama names the function (tool_name), or nothing: the result answers the oldest open call
        answered = next((c for c in open_calls if message.tool_name in (None, c.name)), None)
        if answered is None:
            called = f" {message.tool_name!r}" if message.tool_name is not None else ""
            raise bad_request(f"{param}: a tool message answers no open tool call{called} of an earlier "
                              "assistant message", param=f"{param}.tool_name")  # fmt: skip
        open_calls.remove(answered)
        call_id, tool_name = answered.id, answered.name
    open_calls.extend(calls)
    content: list[ContentPart] = [TextPart(message.content)] if message.content else []
    content.extend(ImagePart(image) for image in message.images or ())
    return Message(role, tuple(content), tuple(calls), call_id, tool_name, message.thinking)


def ollama_conversation(body: ChatRequest) -> Conversation:
    tools = tuple(
        _tool(t.function.name, t.function.description, t.function.parameters, False, i)
        for i, t in enumerate(body.tools or ())
    )
    _check_unique(tools, "tools")
    open_calls: list[ToolCall] = []
    count = [0]
    messages = tuple(_ollama_message(m, i, open_calls, count) for i, m in enumerate(body.messages))
    # think: true, false, or a level ("low", "medium", "high": gpt-oss), which turns thinking on
    thinking = None if body.think is None else body.think is not False
    level = body.think if isinstance(body.think, str) else None
    return Conversation(messages, tools, thinking=thinking, reasoning_effort=level)
