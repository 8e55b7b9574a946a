"""Forced tool calls (tool_choice required or a named function): the grammar that makes the output be calls,
and the parser that reads that output back.

The output is JSON, not the model's own call format: one `{"name": ..., "arguments": {...}}` object, or an
array of them where parallel calls are allowed, with each function's parameters as the arguments' schema.
This works on any model, one whose template has no tool section and the random-weight ones included, as
vLLM's named tool choice does; the calls are read from the JSON, never from what a model's format parser
would make of it.
"""

from __future__ import annotations

import json
from typing import Any

from backends.base import StructuredOutput
from backends.conversation import Conversation, ToolChoiceKind, ToolDefinition
from backends.tools.formats import object_array, object_call
from backends.tools.parser import RegionParse, ToolCallParser

# A model whose output never settles (a random-weight one, greedy) could add calls to an array until its
# max_tokens: the array is bounded, well above what any one answer needs.
MAX_PARALLEL_CALLS = 8


_DEFINITIONS = ("$defs", "definitions")


def _rebased(node: Any, prefix: str) -> Any:
    """The schema with its local references ("#/$defs/X") pointing at the root's "#/$defs/{prefix}X"."""
    if isinstance(node, dict):
        out = {key: _rebased(value, prefix) for key, value in node.items() if key not in _DEFINITIONS}
        ref = node.get("$ref")
        if isinstance(ref, str):
            for section in _DEFINITIONS:
                if ref.startswith(f"#/{section}/"):
                    out["$ref"] = f"#/$defs/{prefix}{ref[len(section) + 3 :]}"
        return out
    if isinstance(node, list):
        return [_rebased(item, prefix) for item in node]
    return node


def _call_schema(tool: ToolDefinition, definitions: dict[str, Any]) -> dict[str, Any]:
    """One call's schema. The parameters move under "arguments", so their definitions (pydantic's $defs)
    move to the root, where their references can still find them, under names of this tool's own."""
    parameters: dict[str, Any] = tool.schema()  # JSON: its values are whatever the client sent
    prefix = f"{tool.name}."
    for section in _DEFINITIONS:
        for name, definition in (parameters.get(section) or {}).items():
            definitions[f"{prefix}{name}"] = _rebased(definition, prefix)
    # properties are generated in order: the name first, so a stream can announce the call at once
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": _rebased(parameters, prefix)},
        "required": ["name", "arguments"],
    }


def _output(schema: dict[str, Any], definitions: dict[str, Any]) -> StructuredOutput:
    return StructuredOutput(
        "tool_calls", json.dumps({**schema, "$defs": definitions} if definitions else schema)
    )


def forced_call_output(conversation: Conversation) -> StructuredOutput | None:
    """The grammar of a forced call; None when the request does not force one."""
    choice = conversation.tool_choice
    definitions: dict[str, Any] = {}
    if choice.kind is ToolChoiceKind.NAMED:
        tool = conversation.tool(choice.name or "")
        assert tool is not None, "the gateway checks that tool_choice names one of the tools"
        return _output(_call_schema(tool, definitions), definitions)
    if choice.kind is not ToolChoiceKind.REQUIRED or not conversation.tools:
        return None
    calls = [_call_schema(tool, definitions) for tool in conversation.tools]
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if conversation.parallel_tool_calls:
        calls_array = {"type": "array", "items": call, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS}
        return _output(calls_array, definitions)
    return _output(call, definitions)


class ForcedCallParser(ToolCallParser):
    """Reads what forced_call_output's grammar lets a model write: one call object or an array of them."""

    name = "forced"
    leading_markers = ("{", "[")

    def parse_region(self, region: str, marker: str, final: bool) -> RegionParse:
        if marker == "[":
            return object_array(region, 0, final)
        call, end, invalid = object_call(region, 0, final)
        return RegionParse([call] if call is not None else [], end, invalid)
