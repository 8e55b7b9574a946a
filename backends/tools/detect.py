"""Which tool-call format a model writes, read from its chat template as Ollama and llama-server do; a
model's `tool_parser:` setting names one instead."""

from __future__ import annotations

from backends.tools.formats import PARSERS
from backends.tools.parser import ToolCallParser

# The first marker found in the template decides; more specific formats come first (Hermes templates of
# Llama 3 models mention <|python_tag|> nowhere, but Llama 3.1's mention both '"parameters"' and tags).
_TEMPLATE_MARKERS = (
    ("<|channel|>", "harmony"),  # gpt-oss: its calls are messages to functions.NAME on a channel
    ("<｜tool▁calls▁begin｜>", "deepseek_v3"),
    ("<｜tool▁call▁begin｜>", "deepseek_v3"),
    ("[TOOL_CALLS]", "mistral"),
    ("<tool_call>", "hermes"),
    ("<|tool_call|>", "granite"),
    ("functools[", "firefunction_v2"),
    (">>>all", "functionary_v3_2"),
    ("<function=", "functionary_v3_1"),
    ("<|python_tag|>", "llama3_json"),
    ('"parameters": dictionary of argument name', "llama3_json"),  # Llama 3.2's JSON tool prompt
)


class UnknownToolParserError(ValueError):
    def __init__(self, name: str) -> None:
        known = ", ".join(sorted(PARSERS))
        super().__init__(f"unknown tool_parser {name!r} (known: {known})")


def format_of_template(template: str | None) -> str | None:
    """The tool-call format the template teaches, or None when it has no tool section."""
    if not template:
        return None
    for marker, name in _TEMPLATE_MARKERS:
        if marker in template:
            return name
    return None


def parser_class(name: str) -> type[ToolCallParser]:
    try:
        return PARSERS[name]
    except KeyError:
        raise UnknownToolParserError(name) from None
