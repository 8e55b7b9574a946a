"""The tool-call formats of the model families, named as vLLM names its parsers where it has one.

Each format is the text its chat template teaches the model (the templates in llama.cpp's models/templates
show them); what a model writes when it strays is decided per format and said in its docstring.
"""

from __future__ import annotations

import json
import re

from backends.tools.harmony import HarmonyParser
from backends.tools.json_scan import skip_space, value_end
from backends.tools.parser import PartialCall, RegionParse, ToolCallParser

# {"name": "f", "arguments": ...} with the name first: the arguments can stream as they are written
_NAME_FIRST = re.compile(
    r'\{\s*"(?:name|function)"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _could_become(text: str, marker: str) -> bool:
    """Whether `text` (the rest of a region) may still grow into `marker`."""
    return marker.startswith(text)


def object_call(text: str, start: int, final: bool) -> tuple[PartialCall | None, int | None, bool]:
    """One `{"name": ..., "arguments"|"parameters": ...}` object at `start`: (the call so far or None
    while undecided, the index past the object once complete, whether it is no call at all)."""
    position = skip_space(text, start)
    if position >= len(text):
        return None, None, final
    if text[position] != "{":
        return None, None, True
    end = value_end(text, position)
    match = _NAME_FIRST.match(text, position)
    if end is None:
        if match is None:
            return None if final else PartialCall(), None, final
        name = json.loads(f'"{match.group(1)}"')
        arguments_at = match.end()
        if arguments_at < len(text) and text[arguments_at] == '"':
            return PartialCall(name=name), None, False  # arguments as a JSON string: decoded when whole
        arguments_end = value_end(text, arguments_at)
        so_far = text[arguments_at:arguments_end] if arguments_end else text[arguments_at:].rstrip()
        return PartialCall(name=name, arguments=so_far), None, False
    try:
        whole = json.loads(text[position:end])
    except ValueError:
        return None, None, True
    if not isinstance(whole, dict):
        return None, None, True
    call_name = whole.get("name", whole.get("function"))
    arguments = whole["arguments"] if "arguments" in whole else whole.get("parameters")
    if not isinstance(call_name, str) or arguments is None:
        return None, None, True
    if isinstance(arguments, str):
        text_arguments = arguments  # some models write the arguments as a string holding the JSON
    elif match is not None:
        raw_end = value_end(text, match.end())
        text_arguments = text[match.end() : raw_end]  # as streamed, so the fragments add up to it
    else:
        text_arguments = json.dumps(arguments, ensure_ascii=False)
    # an "id" key (Mistral Nemo) comes after the arguments, too late for a stream's first delta: not used
    return PartialCall(name=call_name, arguments=text_arguments, complete=True), end, False


def object_array(text: str, start: int, final: bool) -> RegionParse:
    """A JSON array of call objects, `[{...}, {...}]`; the region ends at its closing bracket."""
    position = skip_space(text, start)
    if position >= len(text):
        return RegionParse(invalid=final)
    if text[position] != "[":
        return RegionParse(invalid=True)
    position += 1
    calls: list[PartialCall] = []
    while True:
        position = skip_space(text, position)
        if position >= len(text):
            return RegionParse(calls, invalid=final and not calls)
        if text[position] == "]":
            return RegionParse(calls, position + 1)
        call, end, invalid = object_call(text, position, final)
        if invalid:
            return RegionParse(calls, invalid=True)
        if call is not None:
            calls.append(call)
        if end is None:
            return RegionParse(calls)
        position = skip_space(text, end)
        if position < len(text) and text[position] == ",":
            position += 1
        elif position < len(text) and text[position] != "]":
            return RegionParse(calls, invalid=True)


class HermesParser(ToolCallParser):
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, once per call: Qwen2.5, Qwen3, Hermes 2
    Pro / 3, SmolLM3. Accepted as well: the same object bare at the very start of the output (small Qwen
    models drop the tags) and a missing closing tag at the end of the output."""

    name = "hermes"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    start_markers = (OPEN,)
    marker_tokens = (OPEN, CLOSE)
    leading_markers = ("{",)

    def parse_region(self, region: str, marker: str, final: bool) -> RegionParse:
        call, end, invalid = object_call(region, 0, final)
        if invalid:
            return RegionParse(invalid=True)
        calls = [call] if call is not None else []
        if end is None:
            return RegionParse(calls)
        if marker == self.OPEN:
            after = skip_space(region, end)
            if region.startswith(self.CLOSE, after):
                return RegionParse(calls, after + len(self.CLOSE))
            if not final and _could_become(region[after:], self.CLOSE):
                return RegionParse(calls)
        return RegionParse(calls, end)


class Llama3JsonParser(ToolCallParser):
    """Llama 3.1 / 3.2 / 3.3 with JSON tools: `{"name": ..., "parameters": {...}}` as the whole answer,
    optionally after `<|python_tag|>`, several separated by `;`. Built-in tools (`brave_search.call(...)`)
    are not function calls and stay content."""

    name = "llama3_json"
    start_markers = marker_tokens = ("<|python_tag|>",)
    leading_markers = ("{",)

    def parse_region(self, region: str, marker: str, final: bool) -> RegionParse:
        calls: list[PartialCall] = []
        position = 0
        while True:
            call, end, invalid = object_call(region, position, final)
            if invalid:
                return RegionParse(calls, position) if calls else RegionParse(invalid=True)
            if call is not None:
                calls.append(call)
            if end is None:
                return RegionParse(calls)
            if not self._leading:
                return RegionParse(calls, end)  # strict's grammar constrains one call per tag: read that one
            position = skip_space(region, end)
            if position >= len(region):
                return RegionParse(calls, None if not final else position)
            if region[position] == ";":
                position += 1
            elif region[position] != "{":
                return RegionParse(calls, position)  # what follows the calls is content


class MistralParser(ToolCallParser):
    """`[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}]` (Mistral 7B v0.3, Nemo) or
    `[TOOL_CALLS]name[ARGS]{...}` (Mistral Small 3.2, Devstral; `[CALL_ID]id` may precede `[ARGS]`)."""

    name = "mistral"
    start_markers = ("[TOOL_CALLS]",)
    ARGS, CALL_ID = "[ARGS]", "[CALL_ID]"
    marker_tokens = ("[TOOL_CALLS]", ARGS, CALL_ID)

    def parse_region(self, region: str, marker: str, final: bool) -> RegionParse:
        start = skip_space(region, 0)
        if start < len(region) and region[start] == "[":
            return object_array(region, start, final)
        name_match = _IDENTIFIER.match(region, start)
        name_end = name_match.end() if name_match else start
        rest = region[name_end:]
        call_id = None
        if rest.startswith(self.CALL_ID):
            id_end = rest.find(self.ARGS)
            if id_end < 0:
                return RegionParse(invalid=final)
            call_id, rest = rest[len(self.CALL_ID) : id_end], rest[id_end:]
        if not rest.startswith(self.ARGS):
            still = not final and (_could_become(rest, self.ARGS) or _could_become(rest, self.CALL_ID))
            return RegionParse() if still else RegionParse(invalid=True)
        if name_match is None:
            return RegionParse(invalid=True)
        arguments_at = skip_space(region, len(region) - len(rest) + len(self.ARGS))
        arguments_end = value_end(region, arguments_at)
        if arguments_end is None:
            arguments = region[arguments_at:].rstrip()
            return RegionParse([PartialCall(name_match.group(), arguments, id=call_id)])
        call = PartialCall(name_match.group(), region[arguments_at:arguments_end], True, call_id)
        return RegionParse([call], arguments_end)


class DeepSeekV3Parser(ToolCallParser):
    """DeepSeek V3 / R1: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name` then the
    arguments in a ```json fence, `<｜tool▁call▁end｜>` … `<｜tool▁calls▁end｜>`; V3.1 and later write
    `<｜tool▁call▁begin｜>name<｜tool▁sep｜>{...}<｜tool▁call▁end｜>`. Both are read."""

    name = "deepseek_v3"
    CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
    CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
    start_markers = (CALLS_BEGIN, CALL_BEGIN)
    marker_tokens = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP)

    def parse_region(self, region: str, marker: str, final: bool) -> RegionParse:
        calls: list[PartialCall] = []
        position = 0
        opened_by_call = marker == self.CALL_BEGIN  # the region's first call has no calls-begin before it
        while True:
            position = skip_space(region, position)
            rest = region[position:]
            if opened_by_call:
                opened_by_call = False
            elif rest.startswith(self.CALLS_END):
                return RegionParse(calls, position + len(self.CALLS_END))
            elif rest.startswith(self.CALL_BEGIN):
                position += len(self.CALL_BEGIN)
            elif not final and (_could_become(rest, self.CALLS_END) or _could_become(rest, self.CALL_BEGIN)):
                return RegionParse(calls)
            else:
                return RegionParse(calls, position) if calls else RegionParse(invalid=True)
            separator = region.find(self.SEP, position)
            if separator < 0:
                return RegionParse(calls, invalid=final and not calls)
            head, position = region[position:separator].strip(), separator + len(self.SEP)
            if head == "function":  # V3: the type, then the name on its own line and a fenced block
                newline = region.find("\n", position)
                if newline < 0:
                    return RegionParse(calls, invalid=final and not calls)
                head, position = region[position:newline].strip(), newline + 1
                fence = region[position:]
                if fence.startswith("```json"):
                    position += len("```json")
                elif not final and _could_become(fence, "```json"):
                    return RegionParse([*calls, PartialCall(head)])
            arguments_at = skip_space(region, position)
            arguments_end = value_end(region, arguments_at)
            if arguments_end is None:
                calls.append(PartialCall(head, region[arguments_at:].rstrip()))
                return RegionParse(calls)
            calls.append(PartialCall(head, region[arguments_at:arguments_end], complete=True))
            position = skip_space(region, arguments_end)
            if region.startswith("```", position):
                position += 3
            elif not final and position < len(region) and _could_become(region[position:], "```"):
                return RegionParse(calls)
            position = skip_space(region, position)
            if region.startswith(self.CALL_END, position):
                position += len(self.CALL_END)
            elif not final and _could_become(region[position:], self.CALL_END):
                return RegionParse(calls)


class FireFunctionParser(ToolCallParser):
    """Firefunction v2: ` functools[{"name": ..., "arguments": {...}}, ...]`."""

    name = "firefunction_v2"
    start_markers = ("functools",)

    def parse_region(self, region: str, marker: str, final: bool) -> RegionParse:
        return object_array(region, 0, final)


class GraniteParser(ToolCallParser):
    """IBM Granite 3.x: `<|tool_call|>[{"name": ..., "arguments": {...}}]`."""

    name = "granite"
    start_markers = marker_tokens = ("<|tool_call|>",)

    def parse_region(self, region: str, marker: str, final: bool) -> RegionParse:
        return object_array(region, 0, final)


class FunctionaryV32Parser(ToolCallParser):
    """Functionary v3.2: the generation prompt ends in `>>>`; the model names a recipient on its first line
    (`all` for the answer, else a function) and writes the arguments' JSON below; `>>>` opens the next."""

    name = "functionary_v3_2"
    start_markers = (">>>",)
    starts_in_region = True

    def parse_region(self, region: str, marker: str, final: bool) -> RegionParse:
        newline = region.find("\n")
        if newline < 0:
            if final or not re.fullmatch(r"[A-Za-z0-9_.\-]*", region):
                return RegionParse(invalid=True)
            return RegionParse()
        recipient = region[:newline].strip()
        if recipient == "all":
            return RegionParse(end=newline + 1)  # the answer follows as content
        if not _IDENTIFIER.fullmatch(recipient):
            return RegionParse(invalid=True)
        arguments_at = skip_space(region, newline + 1)
        arguments_end = value_end(region, arguments_at)
        if arguments_end is None:
            if final and arguments_at >= len(region):
                return RegionParse(invalid=True)
            return RegionParse([PartialCall(recipient, region[arguments_at:].rstrip())])
        return RegionParse([PartialCall(recipient, region[arguments_at:arguments_end], True)], arguments_end)


class FunctionTagParser(ToolCallParser):
    """`<function=name>{...}</function>`: Functionary v3.1 and Llama 3.1 taught custom tool calls so."""

    name = "functionary_v3_1"
    start_markers = ("<function=",)
    CLOSE = "</function>"

    def parse_region(self, region: str, marker: str, final: bool) -> RegionParse:
        close_name = region.find(">")
        if close_name < 0:
            return RegionParse(invalid=final or not _IDENTIFIER.fullmatch(region or "a"))
        name = region[:close_name]
        if not _IDENTIFIER.fullmatch(name):
            return RegionParse(invalid=True)
        arguments_at = skip_space(region, close_name + 1)
        arguments_end = value_end(region, arguments_at)
        if arguments_end is None:
            return RegionParse([PartialCall(name, region[arguments_at:].rstrip())])
        call = PartialCall(name, region[arguments_at:arguments_end], complete=True)
        after = skip_space(region, arguments_end)
        if region.startswith(self.CLOSE, after):
            return RegionParse([call], after + len(self.CLOSE))
        if not final and _could_become(region[after:], self.CLOSE):
            return RegionParse([call])
        return RegionParse([call], arguments_end)


PARSERS: dict[str, type[ToolCallParser]] = {
    parser.name: parser
    for parser in (
        HermesParser,
        Llama3JsonParser,
        MistralParser,
        DeepSeekV3Parser,
        FireFunctionParser,
        GraniteParser,
        FunctionaryV32Parser,
        FunctionTagParser,
        HarmonyParser,
    )
}
