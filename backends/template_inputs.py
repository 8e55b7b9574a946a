"""A conversation as chat templates receive it: the variables Hugging Face's `apply_chat_template` passes.

Messages are dicts with `role` and `content`; an assistant's calls are `tool_calls` entries with the
arguments as a dict (what most templates iterate or `tojson`); tool results carry `tool_call_id` and
`name`; `tools` are OpenAI function schemas. Content parts become one string unless the template reads
parts itself (it iterates `content` and looks at each part's `type`), as vLLM decides it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from backends.conversation import Conversation, ImagePart, Message, Role, TextPart

# a template that reads parts: `for x in message['content']` / `message.content` with a check of `type`
_READS_PARTS = re.compile(r"for\s+\w+\s+in\s+(?:message|msg|m)(?:\[['\"]content['\"]\]|\.content)")


_FUNCTIONS_VARIABLE = re.compile(r"\+\s*functions\b")
_TOOLS_VARIABLE = re.compile(r"(?<![\w'\"])tools\b(?!\[)")


def takes_tools(template: str) -> bool:
    """Whether the template renders the tools itself; for one that does not, the caller must describe
    them to the model (DeepSeek's templates, ChatML ones)."""
    return bool(_TOOLS_VARIABLE.search(template) or _FUNCTIONS_VARIABLE.search(template))


def reads_content_parts(template: str) -> bool:
    return bool(_READS_PARTS.search(template)) and "type" in template


def _content(message: Message, as_parts: bool) -> str | list[dict[str, Any]]:
    if as_parts:
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                parts.append({"type": "image", "url": part.url})
        return parts
    # an assistant turn that only calls tools has no content: "" (as Ollama and vLLM pass it), since
    # templates test it with `in` and `+` (Qwen3's fails on None)
    return message.text


def template_message(
    message: Message, as_parts: bool = False, arguments_as_text: bool = False
) -> dict[str, Any]:
    role = Role.SYSTEM if message.role is Role.DEVELOPER else message.role
    rendered: dict[str, Any] = {"role": role.value, "content": _content(message, as_parts)}
    if message.tool_calls:
        rendered["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": call.arguments if arguments_as_text else call.arguments_object(),
                },
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        rendered["name"] = message.name
    if message.reasoning is not None:
        # Qwen3 and DeepSeek templates read reasoning_content, gpt-oss's reads thinking (as Ollama names it)
        rendered["reasoning_content"] = rendered["thinking"] = message.reasoning
    return rendered


def template_tools(conversation: Conversation) -> list[dict[str, Any]] | None:
    if not conversation.tools:
        return None
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                **({"description": tool.description} if tool.description is not None else {}),
                "parameters": tool.schema(),
            },
        }
        for tool in conversation.tools
    ]


def template_variables(
    conversation: Conversation, template: str, arguments_as_text: bool = False
) -> dict[str, Any]:
    """Everything the template sees besides bos/eos and add_generation_prompt.

    arguments_as_text: the calls' arguments as JSON text rather than dicts, for the few templates that
    concatenate them (functionary v3.2); ChatTemplate tries dicts first.
    """
    as_parts = reads_content_parts(template)
    tools = template_tools(conversation)
    variables: dict[str, Any] = {
        "messages": [template_message(m, as_parts, arguments_as_text) for m in conversation.messages],
        "tools": tools,
    }
    if conversation.thinking is not None:
        variables["enable_thinking"] = conversation.thinking
    if conversation.reasoning_effort is not None:
        variables["reasoning_effort"] = conversation.reasoning_effort
    if _FUNCTIONS_VARIABLE.search(template) and not _TOOLS_VARIABLE.search(template):
        # firefunction v2 reads its tools as `functions` (JSON text) and the time as `datetime`, the
        # variables llama.cpp's server gives it
        variables["functions"] = json.dumps(tools, indent=2) if tools else ""
        variables["datetime"] = datetime.now().strftime("%b %d %Y %H:%M:%S GMT")
    return variables
