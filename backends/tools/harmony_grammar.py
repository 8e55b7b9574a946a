"""The grammar of gpt-oss's output under strict functions with tool_choice auto: harmony messages, a call to
a function constrained to its parameters (backends.tools.strict uses it).

A harmony output has no free text around its calls to wait in: it is all messages, so the grammar is the
message stream (as xgrammar's builtin harmony tag is), written with the headers HarmonySplitter reads:
analysis, commentary and final messages of any text, each ended by `<|end|>` and followed by the next
after `<|start|>assistant`, and calls to `functions.NAME` in either header order, whose body is the
arguments' JSON. The last message has no end marker in the text: gpt-oss ends a turn on `<|return|>`, a
call on `<|call|>`, both end-of-generation tokens, which the grammar allows once the message is whole and
the backend does not write (HarmonySplitter.finish knows).
"""

from __future__ import annotations

from typing import Any

from backends.conversation import Conversation, ToolDefinition
from backends.structured import MAX_WHITESPACE
from backends.tools.harmony import CALL, CHANNEL, CONSTRAIN, END, FUNCTIONS, MESSAGE, RETURN, START

_ANY_OBJECT: dict[str, Any] = {"type": "object"}
_SEPARATOR = f"{START}assistant"
# a message's text cannot hold a marker: its end (or a header) would be read there
_BODY = {"type": "any_text", "excludes": [START, CHANNEL, MESSAGE, CONSTRAIN, END, CALL, RETURN]}
_CHANNELS = ("analysis", "commentary", "final")
# between the channel and <|message|>: the content type as gpt-oss writes it, if at all
_CONTENT_TYPES = ("", " json", f" {CONSTRAIN}json", f"{CONSTRAIN}json")


def _tag(begin: str, content: dict[str, Any], end: str | list[str]) -> dict[str, Any]:
    return {"type": "tag", "begin": begin, "content": content, "end": end}


def _calls(tool: ToolDefinition) -> list[dict[str, Any]]:
    schema = tool.schema() if tool.strict else _ANY_OBJECT
    body = {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": MAX_WHITESPACE}
    recipient = f"to={FUNCTIONS}{tool.name}"
    headers = [f"{CHANNEL}commentary {recipient}{kind}" for kind in _CONTENT_TYPES]
    headers += [f" {recipient}{CHANNEL}commentary{kind}" for kind in _CONTENT_TYPES]
    return [_tag(f"{header}{MESSAGE}", body, "") for header in headers]


def harmony_output(conversation: Conversation) -> dict[str, Any]:
    """The structural tag's format (xgrammar's JSON): messages, then (parallel_tool_calls or not) the
    turn ends at a call, as gpt-oss's does."""
    messages = [_tag(f"{CHANNEL}{channel}{MESSAGE}", _BODY, [END, ""]) for channel in _CHANNELS]
    calls = [tag for tool in conversation.tools for tag in _calls(tool)]
    return {"type": "tags_with_separator", "tags": [*messages, *calls], "separator": _SEPARATOR,
            "at_least_one": True}  # fmt: skip
