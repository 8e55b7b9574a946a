"""Which special tokens an output must be written with: the markers its readers parse.

Both backends write an output's special tokens as nothing (a model's `<|im_end|>` is no part of its answer),
yet many tool-call formats open and separate their calls with special tokens (Mistral's `[TOOL_CALLS]`,
Llama 3's `<|python_tag|>`, gpt-oss's harmony `<|channel|>` … `<|message|>`), and some thinking models'
`<think>` is one. Where the gateway reads an output in such a format, the request names those tokens
(SamplingParams.preserved_token_ids) and the backend writes their text, as llama-server's "preserved
tokens" and vLLM's tool parsers (skip_special_tokens off) do; any other output is written as before.

Resolved where the prompt is rendered, once per request: a marker counts when the vocabulary tokenizes it
to exactly one token. Where that token is an ordinary one its text is written anyway (the backends write a
preserved token's special text only in place of an empty piece), so naming it changes nothing; a marker
that is plain text in a vocabulary (several tokens) is never named.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from backends.conversation import Conversation, ToolChoiceKind
from backends.tools.detect import parser_class
from backends.tools.harmony import HarmonyParser
from backends.tools.reasoning import MARKER_TOKENS as THINK_MARKERS

FALLBACK_FORMAT = "hermes"  # the format tandem describes tools in where a template has no tool section


def markers_read(
    conversation: Conversation, tool_format: str | None, override: str | None, reasoning: bool
) -> tuple[str, ...]:
    """The marker texts the gateway's readers will parse in this output (gateway.tool_calls.tool_plan
    decides the same way): the tool-call format's under tool_choice auto with tools shown, harmony's
    wherever the output is harmony, `<think>`'s where a reasoning part is split off. A forced call's
    output is JSON, read with no markers."""
    kind = conversation.tool_choice.kind
    if kind in (ToolChoiceKind.REQUIRED, ToolChoiceKind.NAMED):
        return ()
    markers: list[str] = []
    reading = override or tool_format
    if conversation.tools and kind is not ToolChoiceKind.NONE:
        markers += parser_class(reading or FALLBACK_FORMAT).marker_tokens
    if reading == HarmonyParser.name:
        markers += HarmonyParser.marker_tokens  # its channels are split with or without tools
    if reasoning:
        markers += THINK_MARKERS
    return tuple(dict.fromkeys(markers))


def single_tokens(markers: Iterable[str], tokenize: Callable[[str], list[int]]) -> dict[str, int]:
    """The markers that are one token of this vocabulary (tokenize parses special-token text), by text."""
    found: dict[str, int] = {}
    for marker in markers:
        ids = tokenize(marker)
        if len(ids) == 1:
            found[marker] = ids[0]
    return found
