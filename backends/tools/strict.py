"""Strict functions under tool_choice auto: the output is free text, but a call, once the model opens one,
has arguments that match its function's schema (vLLM's and OpenAI's `strict: true`).

The grammar is an xgrammar structural tag: any text until the format's call-opening marker (the trigger,
`<tool_call>` for Hermes), then one of the functions' call openings with its name, a body constrained to
that function's parameters (a non-strict function's to any JSON object), the call's closing, and free
text again. With parallel_tool_calls false the grammar ends after the first call.

It is built from the call format the model's template teaches (backends.tools.detect), so what the grammar
allows is what that format's parser reads. Markers that are special tokens of the vocabulary (Mistral's
`[TOOL_CALLS]`, Llama 3's `<|python_tag|>`, Granite's, DeepSeek's, gpt-oss's harmony tokens) are written
as text where a reader parses them (backends.tools.markers), and the grammar sees those tokens as their text
too (StructuredOutput.preserved_token_ids), so a text trigger matches the special token and the same text
spelled out alike, each of which the parser reads as a call. gpt-oss's output is all harmony messages: its
grammar is the whole message stream (harmony_output), with calls to the functions constrained. Llama 3's
bare JSON at the very start of an output (no `<|python_tag|>`) stays unconstrained, and is then not read as
a call. Functionary v3.2 has no free text either: its output is messages to recipients, the first one
right after the generation prompt's `>>>`, each `all` (the answer) or a function with its arguments below
(functionary_output).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backends.base import StructuredOutput
from backends.conversation import Conversation, ToolChoiceKind, ToolDefinition
from backends.structured import MAX_WHITESPACE
from backends.tools.formats import DeepSeekV3Parser, FunctionaryV32Parser, MistralParser
from backends.tools.harmony import HarmonyParser
from backends.tools.harmony_grammar import harmony_output

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
_DEEPSEEK_CALLS_BEGIN, _DEEPSEEK_CALLS_END = DeepSeekV3Parser.CALLS_BEGIN, DeepSeekV3Parser.CALLS_END
_DEEPSEEK_CALL, _DEEPSEEK_SEP = DeepSeekV3Parser.CALL_BEGIN, DeepSeekV3Parser.SEP
SHAPES: dict[str, CallShape] = {
    "hermes": CallShape("<tool_call>", '<tool_call>\n{{"name": {name}, "arguments": ', "}\n</tool_call>"),
    "functionary_v3_1": CallShape("<function=", "<function={bare}>", "</function>"),
    "firefunction_v2": CallShape("functools[", *_OBJECT_CALL, listed=("functools[", ", ", "]")),
    # Mistral Small 3.2 / Devstral's form; the list form where the vocabulary has no [ARGS] (MISTRAL_LISTED)
    "mistral": CallShape("[TOOL_CALLS]", "[TOOL_CALLS]{bare}[ARGS]", ""),
    # each call after a tag of its own (the parser reads `;`-separated ones after one tag as well)
    "llama3_json": CallShape("<|python_tag|>", '<|python_tag|>{{"name": {name}, "parameters": ', "}"),
    "granite": CallShape("<|tool_call|>", *_OBJECT_CALL, listed=("<|tool_call|>[", ", ", "]")),
    # V3.1's form (V3's fenced one is read as well, not generated)
    "deepseek_v3": CallShape(
        _DEEPSEEK_CALLS_BEGIN,
        f"{_DEEPSEEK_CALL}{{bare}}{_DEEPSEEK_SEP}",
        DeepSeekV3Parser.CALL_END,
        listed=(_DEEPSEEK_CALLS_BEGIN, "", _DEEPSEEK_CALLS_END),
    ),
}
MISTRAL_LISTED = CallShape("[TOOL_CALLS]", *_OBJECT_CALL, listed=("[TOOL_CALLS][", ", ", "]"))
SUPPORTED = (*SHAPES, HarmonyParser.name, FunctionaryV32Parser.name)


class StrictFormatError(ValueError):
    """Strict functions under auto on a format the grammar cannot follow (a 400 naming the function)."""

    def __init__(self, tool_format: str, tool_index: int) -> None:
        self.tool_index = tool_index
        supported = ", ".join(sorted(SUPPORTED))
        super().__init__(
            "'strict' functions under tool_choice 'auto' are not supported for this model's tool-call "
            f"format '{tool_format}' (its calls open with no marker the grammar can wait for; "
            f"supported: {supported}). Use tool_choice 'required' or a named function, whose calls are "
            "always schema-exact, or drop 'strict'."
        )


def strict_auto(conversation: Conversation) -> bool:
    """Whether the request asks for constrained arguments under auto: some function is strict."""
    kind = conversation.tool_choice.kind
    return kind is ToolChoiceKind.AUTO and any(tool.strict for tool in conversation.tools)


def _arguments(tool: ToolDefinition) -> dict[str, Any]:
    schema = tool.schema() if tool.strict else _ANY_OBJECT
    return {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": MAX_WHITESPACE}


def _tag(shape: CallShape, tool: ToolDefinition) -> dict[str, Any]:
    opening = shape.opening.format(name=json.dumps(tool.name), bare=tool.name)
    return {"type": "tag", "begin": opening, "content": _arguments(tool), "end": shape.closing}


def functionary_output(conversation: Conversation) -> dict[str, Any]:
    """Functionary v3.2's messages: `all` and its text (which cannot hold the next `>>>`), or a function's
    name and its arguments, separated by `>>>`. Without parallel calls: one call, alone or after an
    answer, and the output ends there."""
    separator = FunctionaryV32Parser.start_markers[0]
    answer = {"type": "tag", "begin": "all\n", "content": {"type": "any_text", "excludes": [separator]},
              "end": ""}  # fmt: skip
    calls = [{"type": "tag", "begin": f"{tool.name}\n", "content": _arguments(tool), "end": ""}
             for tool in conversation.tools]  # fmt: skip
    if conversation.parallel_tool_calls:
        return {"type": "tags_with_separator", "tags": [answer, *calls], "separator": separator,
                "at_least_one": True}  # fmt: skip
    call = {"type": "or", "elements": calls}
    then_call = {"type": "optional", "content": {"type": "sequence", "elements": [
        {"type": "const_string", "value": separator}, call]}}  # fmt: skip
    return {"type": "or", "elements": [call, {"type": "sequence", "elements": [answer, then_call]}]}


def auto_call_output(
    conversation: Conversation,
    tool_format: str,
    markers: Mapping[str, int] | None = None,
    preserved: frozenset[int] = frozenset(),
) -> StructuredOutput | None:
    """The grammar for strict functions under auto, in `tool_format`; None when no function is strict.
    markers: the Prompt's single-token markers (which form Mistral's calls take); preserved: the special
    tokens the request writes as text (the grammar matches them so). Raises StrictFormatError for a
    format without a usable trigger."""
    if not strict_auto(conversation):
        return None
    if tool_format == HarmonyParser.name:
        return _structural(harmony_output(conversation), preserved)
    if tool_format == FunctionaryV32Parser.name:
        return _structural(functionary_output(conversation), preserved)
    shape = SHAPES.get(tool_format)
    if tool_format == "mistral" and MistralParser.ARGS not in (markers or {}):
        shape = MISTRAL_LISTED  # Mistral 7B v0.3, Nemo: no [ARGS] token, calls as a JSON list
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
    return _structural(tags, preserved)


def _structural(grammar: dict[str, Any], preserved: frozenset[int]) -> StructuredOutput:
    text = json.dumps({"type": "structural_tag", "format": grammar})
    return StructuredOutput("structural_tag", text, preserved_token_ids=preserved)
