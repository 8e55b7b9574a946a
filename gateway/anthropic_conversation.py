"""Anthropic Messages requests as the protocol-neutral Conversation, and the prompt they render to.

Every block reaches it: the system text, text and image blocks, an assistant's tool_use (its input as the
call's arguments) and thinking, a user's tool_result (a tool message answering that call). A final
assistant message is Anthropic's prefill: the answer continues it, so it is appended after the generation
prompt rather than rendered as a finished turn. Checking a tool's input_schema compiles it with xgrammar
(seconds on first use): call these off the event loop.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from backends.base import Prompt
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
from gateway.anthropic_protocol import (
    CountTokensRequest,
    ImageBlock,
    MessageParam,
    TextBlock,
    ThinkingBlock,
    ThinkingDisabled,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolParam,
    ToolResultBlock,
    ToolUseBlock,
)
from gateway.errors import bad_request
from gateway.generation import chat_prompt
from gateway.registry import ServedModel
from gateway.tool_conversation import checked_tool

# Chat templates have no field for a failed call: the model learns it from the result's text.
TOOL_ERROR_PREFIX = "Error: "


@dataclass(frozen=True, slots=True)
class MappedRequest:
    conversation: Conversation
    prefill: str = ""  # a final assistant message's text, which the answer continues


def _tool(tool: ToolParam, index: int) -> ToolDefinition:
    return checked_tool(tool.name, tool.description, tool.input_schema, bool(tool.strict),
                        param=f"tools[{index}].input_schema", what="input_schema for tool")  # fmt: skip


def _tools(body: CountTokensRequest) -> tuple[ToolDefinition, ...]:
    tools = tuple(_tool(t, i) for i, t in enumerate(body.tools or ()))
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if tool.name in seen:
            raise bad_request(f"Tool names must be unique: '{tool.name}' is repeated.", param=f"tools[{i}]")
        seen.add(tool.name)
    return tools


def _tool_choice(body: CountTokensRequest, tools: tuple[ToolDefinition, ...]) -> tuple[ToolChoice, bool]:
    """The choice and whether parallel calls are allowed."""
    choice = body.tool_choice
    if choice is None:
        return ToolChoice(ToolChoiceKind.AUTO), True
    if isinstance(choice, ToolChoiceNone):
        return ToolChoice(ToolChoiceKind.NONE), True
    parallel = not choice.disable_parallel_tool_use
    if isinstance(choice, ToolChoiceTool):
        if not any(tool.name == choice.name for tool in tools):
            known = ", ".join(tool.name for tool in tools) or "none"
            raise bad_request(f"tool_choice names tool '{choice.name}', which is not among the tools "
                              f"(known: {known}).", param="tool_choice.name")  # fmt: skip
        return ToolChoice(ToolChoiceKind.NAMED, choice.name), parallel
    if isinstance(choice, ToolChoiceAny):
        if not tools:
            raise bad_request("tool_choice 'any' needs at least one tool in 'tools'.", param="tool_choice")
        return ToolChoice(ToolChoiceKind.REQUIRED), parallel
    return ToolChoice(ToolChoiceKind.AUTO), parallel


def _system(system: str | list[TextBlock] | None) -> tuple[Message, ...]:
    if system is None:
        return ()
    text = system if isinstance(system, str) else "\n\n".join(block.text for block in system)
    return (Message.of_text(Role.SYSTEM, text),) if text else ()


def _part(block: TextBlock | ImageBlock) -> ContentPart:
    return TextPart(block.text) if isinstance(block, TextBlock) else ImagePart(block.url())


def _tool_result(block: ToolResultBlock, calls: dict[str, str], param: str) -> Message:
    if block.tool_use_id not in calls:
        raise bad_request(f"tool_result with tool_use_id '{block.tool_use_id}' answers no tool_use block of "
                          "an earlier assistant message.", param=f"{param}.tool_use_id")  # fmt: skip
    content = block.content
    parts: list[ContentPart] = []
    if isinstance(content, str):
        parts = [TextPart(content)] if content else []
    elif content is not None:
        parts = [_part(part) for part in content]
    if block.is_error:
        parts.insert(0, TextPart(TOOL_ERROR_PREFIX))
    return Message(Role.TOOL, tuple(parts), tool_call_id=block.tool_use_id, name=calls[block.tool_use_id])


def _user(message: MessageParam, param: str, calls: dict[str, str]) -> list[Message]:
    """A user message's tool results are tool messages, its other blocks a user message, in their order."""
    out: list[Message] = []
    pending: list[ContentPart] = []
    for j, block in enumerate(message.content):
        if isinstance(block, ToolResultBlock):
            if pending:
                out.append(Message(Role.USER, tuple(pending)))
                pending = []
            out.append(_tool_result(block, calls, f"{param}.content[{j}]"))
        elif isinstance(block, TextBlock | ImageBlock):
            pending.append(_part(block))
        else:
            raise bad_request(f"A user message cannot hold a '{block.type}' block.",
                              param=f"{param}.content[{j}]")  # fmt: skip
    if pending or not out:
        out.append(Message(Role.USER, tuple(pending)))
    return out


def _assistant(message: MessageParam, param: str, calls: dict[str, str]) -> Message:
    parts: list[ContentPart] = []
    tool_calls: list[ToolCall] = []
    reasoning: list[str] = []
    for j, block in enumerate(message.content):
        if isinstance(block, ToolUseBlock):
            tool_calls.append(ToolCall(block.id, block.name, json.dumps(block.input, ensure_ascii=False)))
            calls[block.id] = block.name
        elif isinstance(block, ThinkingBlock):
            reasoning.append(block.thinking)
        elif isinstance(block, TextBlock):
            parts.append(TextPart(block.text))
        else:
            raise bad_request(f"An assistant message cannot hold a '{block.type}' block.",
                              param=f"{param}.content[{j}]")  # fmt: skip
    return Message(Role.ASSISTANT, tuple(parts), tuple(tool_calls), reasoning="".join(reasoning) or None)


def _thinking(body: CountTokensRequest, choice: ToolChoice) -> bool | None:
    if body.thinking is None:
        return None  # the template's default, as on chat completions without reasoning_effort
    on = not isinstance(body.thinking, ThinkingDisabled)
    if on and choice.kind in (ToolChoiceKind.REQUIRED, ToolChoiceKind.NAMED):
        raise bad_request("Thinking may not be enabled when tool_choice forces tool use.", param="thinking")
    return on


def anthropic_conversation(body: CountTokensRequest) -> MappedRequest:
    tools = _tools(body)
    choice, parallel = _tool_choice(body, tools)
    messages: list[Message] = list(_system(body.system))
    calls: dict[str, str] = {}  # tool_use id -> tool name, of the assistant messages so far
    for i, message in enumerate(body.messages):
        if message.role == "user":
            messages.extend(_user(message, f"messages[{i}]", calls))
        else:
            messages.append(_assistant(message, f"messages[{i}]", calls))
    prefill = ""
    last = messages[-1]
    if last.role is Role.ASSISTANT:
        if last.tool_calls or last.reasoning:
            raise bad_request("A final assistant message (a prefill) may hold only text.",
                              param=f"messages[{len(body.messages) - 1}]")  # fmt: skip
        prefill = last.text
        messages.pop()
    conversation = Conversation(tuple(messages), tools, choice, parallel, _thinking(body, choice))
    return MappedRequest(conversation, prefill)


def anthropic_prompt(model: ServedModel, mapped: MappedRequest) -> Prompt:
    """The conversation's prompt, the prefill after its generation prompt. CPU work: off the loop."""
    prompt = chat_prompt(model, mapped.conversation)
    if not mapped.prefill:
        return prompt
    ids = model.backend.tokenize(mapped.prefill, add_special_tokens=False)
    return dataclasses.replace(prompt, token_ids=[*prompt.token_ids, *ids], text=prompt.text + mapped.prefill)
