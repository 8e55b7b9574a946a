"""A Responses API request (and the stored items it continues) as the protocol-neutral Conversation.

Items map to the messages chat completions would send: consecutive reasoning, assistant text and
function_call items are one assistant message; a function_call_output is a tool message answering an earlier
call. What cannot be made sense of is a 400 naming the item, never dropped. Checking schemas may compile
them with xgrammar (seconds on first use): call these off the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

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
from backends.tool_forced import forced_call_output
from gateway.errors import bad_request
from gateway.responses_protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolChoice,
    InputImage,
    InputItem,
    OtherTool,
    ReasoningItem,
    ResponseRequest,
    TextFormatJSONObject,
    TextFormatJSONSchema,
)
from gateway.structured_output import checked_structured
from gateway.tool_conversation import checked_tool

HOSTED_TOOLS_HINT = (
    "tandem serves only 'function' tools; hosted tools (web_search, file_search...) run nowhere"
)


def input_items(body: ResponseRequest) -> list[InputItem]:
    """The request's input as items (a string is one user message already)."""
    if not body.input:
        raise bad_request("'input' must not be empty.", param="input")
    return list(body.input)


def _tools(body: ResponseRequest) -> tuple[ToolDefinition, ...]:
    tools: list[ToolDefinition] = []
    for i, tool in enumerate(body.tools):
        if isinstance(tool, OtherTool):
            raise bad_request(f"Tool type '{tool.type}' is not supported: {HOSTED_TOOLS_HINT}.",
                              param=f"tools[{i}].type", code="unsupported_tool_type")  # fmt: skip
        if any(t.name == tool.name for t in tools):
            raise bad_request(f"Duplicate function name '{tool.name}' in tools.", param=f"tools[{i}].name")
        tools.append(checked_tool(tool.name, tool.description, tool.parameters, bool(tool.strict),
                                  param=f"tools[{i}].parameters"))  # fmt: skip
    return tuple(tools)


def _tool_choice(body: ResponseRequest, tools: Sequence[ToolDefinition]) -> ToolChoice:
    choice = body.tool_choice
    if isinstance(choice, FunctionToolChoice):
        if not any(tool.name == choice.name for tool in tools):
            known = ", ".join(tool.name for tool in tools) or "none"
            raise bad_request(f"tool_choice names function '{choice.name}', which is not among the tools "
                              f"(known: {known}).", param="tool_choice")  # fmt: skip
        return ToolChoice(ToolChoiceKind.NAMED, choice.name)
    if not isinstance(choice, str):
        raise bad_request(f"tool_choice type '{choice.type}' is not supported: {HOSTED_TOOLS_HINT}.",
                          param="tool_choice.type", code="unsupported_tool_type")  # fmt: skip
    kind = ToolChoiceKind(choice)
    if kind is ToolChoiceKind.REQUIRED and not tools:
        raise bad_request("tool_choice 'required' needs at least one tool in 'tools'.", param="tool_choice")
    return ToolChoice(kind)


def _parts(content: str | Sequence[object], param: str) -> tuple[ContentPart, ...]:
    if isinstance(content, str):
        return (TextPart(content),) if content else ()
    parts: list[ContentPart] = []
    for j, part in enumerate(content):
        if isinstance(part, InputImage):
            if part.image_url is None:
                raise bad_request("input_image needs an 'image_url' (tandem keeps no files: file_id is not "
                                  "supported).", param=f"{param}[{j}].image_url")  # fmt: skip
            parts.append(ImagePart(part.image_url, part.detail))
        else:
            text = getattr(part, "text", None)
            parts.append(TextPart(text if isinstance(text, str) else getattr(part, "refusal", "")))
    return tuple(parts)


class _Messages:
    """Collects the messages, merging an assistant turn's items into one message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.calls: dict[str, str] = {}  # call_id -> function name, of every call so far
        self._content: list[ContentPart] = []
        self._calls: list[ToolCall] = []
        self._reasoning: str | None = None

    def flush(self) -> None:
        if self._content or self._calls or self._reasoning is not None:
            self.messages.append(Message(Role.ASSISTANT, tuple(self._content), tuple(self._calls),
                                         reasoning=self._reasoning))  # fmt: skip
        self._content, self._calls, self._reasoning = [], [], None

    def add(self, item: InputItem, param: str) -> None:
        if isinstance(item, ReasoningItem):
            self.flush()
            self._reasoning = item.text()
        elif isinstance(item, FunctionCallItem):
            self._calls.append(ToolCall(item.call_id, item.name, item.arguments))
            self.calls[item.call_id] = item.name
        elif isinstance(item, FunctionCallOutputItem):
            self.flush()
            name = self.calls.get(item.call_id)
            if name is None:
                raise bad_request(f"No function_call with call_id '{item.call_id}' comes before this "
                                  "function_call_output.", param=f"{param}.call_id")  # fmt: skip
            content = _parts(item.output, f"{param}.output")
            self.messages.append(Message(Role.TOOL, content, tool_call_id=item.call_id, name=name))
        elif item.role == "assistant":
            if self._calls or self._content:
                self.flush()
            self._content.extend(_parts(item.content, f"{param}.content"))
        else:
            self.flush()
            self.messages.append(Message(Role(item.role), _parts(item.content, f"{param}.content")))


def response_conversation(
    body: ResponseRequest, history: Sequence[InputItem], items: Sequence[InputItem]
) -> Conversation:
    """`history`: the stored items previous_response_id continues (checked when they were stored)."""
    tools = _tools(body)
    collected = _Messages()
    if body.instructions:
        collected.messages.append(Message.of_text(Role.SYSTEM, body.instructions))
    for item in history:
        collected.add(item, "previous_response_id")
    for i, item in enumerate(items):
        collected.add(item, f"input[{i}]")
    collected.flush()
    if not collected.messages:
        raise bad_request("'input' holds nothing to answer.", param="input")
    effort = body.reasoning.effort if body.reasoning is not None else None
    thinking = None if effort is None else effort not in ("none", "minimal")
    return Conversation(
        tuple(collected.messages), tools, _tool_choice(body, tools), body.parallel_tool_calls, thinking
    )


def response_structured(body: ResponseRequest, conversation: Conversation) -> StructuredOutput | None:
    """text.format's grammar, or a forced call's (checked here, so that it is a 400 at once)."""
    text_format = body.text.format
    forced = forced_call_output(conversation)
    if forced is not None:
        if text_format.type != "text":
            raise bad_request("A forced tool call ('tool_choice' required or a function) cannot be combined "
                              "with 'text.format'.", param="tool_choice")  # fmt: skip
        return checked_structured(forced, "tool_choice")
    if isinstance(text_format, TextFormatJSONObject):
        return StructuredOutput("json_object")
    if isinstance(text_format, TextFormatJSONSchema):
        schema = json.dumps(text_format.schema_)  # no sort_keys: properties are generated in this order
        return checked_structured(StructuredOutput("json_schema", schema), "text.format.schema")
    return None
