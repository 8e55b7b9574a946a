"""Strict functions under tool_choice auto: the output is free text, but a call, once the model opens one,
has arguments that match its function's schema (vLLM's and OpenAI's `strict: true`).

The grammar is an xgrammar structural tag: any text until the format's call-opening marker (the trigger,
`<tool_call>` for Hermes), then one of the functions' call openings with its name, a body constrained to
that function's parameters (a non-strict function's to any JSON object), the call's closing, and free
text again. With parallel_tool_calls false the grammar ends after the first call.

It is built from the call format the model's template teaches (backends.tools.detect), so what the grammar
allows is what that format's parser reads. A format whose calls open without a marker in the text (Llama 3's
bare JSON), or with a special token (the grammar sees the text of ordinary tokens only: Mistral's
`[TOOL_CALLS]`, gpt-oss's channels), has no usable trigger: strict is refused there, not ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from backends.base import StructuredOutput
from backends.conversation import Conversation, ToolChoiceKind, ToolDefinition
from backends.structured import MAX_WHITESPACE

_ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True, slots=True)
class CallShape:
    """How a format writes one call around its arguments' JSON."""

    trigger: str  # the text that opens every call (or list of calls); each opening starts with it
    opening: str  # with {name}: the function's name as JSON text, or {bare}: as it is
    closing: str
    # formats that write all calls in one list after the trigger: (the list's opening, separator, closing)
    listed: tuple[str, str, str] | None = None


_OBJECT_CALL = ('{{"name": {name}, "arguments": ', "}")
# Only formats whose calls open with plain text in their models' vocabularies.
SHAPES: dict[str, CallShape] = {
    "hermes": CallShape("<tool_call>", '<tool_call>\n{{"name": {name}, "arguments": ', "}\n</tool_call>"),
    "functionary_v3_1": CallShape("<function=", "<function={bare}>", "</function>"),
    "firefunction_v2": CallShape("functools[", *_OBJECT_CALL, listed=("functools[", ", ", "]")),
}


class StrictFormatError(ValueError):
    """Strict functions under auto on a format the grammar cannot follow (a 400 naming the function)."""

    def __init__(self, tool_format: str, tool_index: int) -> None:
        self.tool_index = tool_index
        supported = ", ".join(sorted(SHAPES))
        super().__init__(
            "'strict' functions under tool_choice 'auto' are not supported for this model's tool-call "
            f"format '{tool_format}' (its calls open with no text marker the grammar can wait for; "
            f"supported: {supported}). Use tool_choice 'required' or a named function, whose calls are "
            "always schema-exact, or drop 'strict'."
        )


def strict_auto(conversation: Conversation) -> bool:
    """Whether the request asks for constrained arguments under auto: some function is strict."""
    kind = conversation.tool_choice.kind
    return kind is ToolChoiceKind.AUTO and any(tool.strict for tool in conversation.tools)


def _tag(shape: CallShape, tool: ToolDefinition) -> dict[str, Any]:
    opening = shape.opening.format(name=json.dumps(tool.name), bare=tool.name)
    schema = tool.schema() if tool.strict else _ANY_OBJECT
    body = {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": MAX_WHITESPACE}
    return {"type": "tag", "begin": opening, "content": body, "end": shape.closing}


def auto_call_output(conversation: Conversation, tool_format: str) -> StructuredOutput | None:
    """The grammar for strict functions under auto, in `tool_format`; None when no function is strict.
    Raises StrictFormatError for a format without a usable trigger."""
    if not strict_auto(conversation):
        return None
    shape = SHAPES.get(tool_format)
    if shape is None:
        first_strict = next(i for i, tool in enumerate(conversation.tools) if tool.strict)
        raise StrictFormatError(tool_format, first_strict)
    calls = [_tag(shape, tool) for tool in conversation.tools]
    one = not conversation.parallel_tool_calls
    if shape.listed is not None:
        opening, separator, closing = shape.listed
        listed = {"type": "tags_with_separator", "tags": calls, "separator": separator, "at_least_one": True,
                  "stop_after_first": one}  # fmt: skip
        calls = [{"type": "tag", "begin": opening, "content": listed, "end": closing}]
    tags = {"type": "triggered_tags", "triggers": [shape.trigger], "tags": calls, "stop_after_first": one}
    return StructuredOutput("structural_tag", json.dumps({"type": "structural_tag", "format": tags}))
