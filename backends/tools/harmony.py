"""gpt-oss's harmony format: the output is a sequence of messages, each a header naming its channel (and, for
a tool call, its recipient) and a body, e.g.

    <|channel|>analysis<|message|>The user wants the weather.<|end|>
    <|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>

    <|channel|>analysis<|message|>Need the tool.<|end|>
    <|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>

(the generation prompt ends in `<|start|>assistant`, so the first header follows at once; the recipient may
also come after the channel: `<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>`).
The analysis channel is the reasoning; the final channel, and commentary addressed to no one (a preamble
to calls), are the answer; a message to a recipient is a call of that function, its body the arguments.

HarmonySplitter splits the messages as ReasoningParser splits `<think>`, and writes each call into its
content in one canonical form, `<|channel|>commentary to=NAME<|message|>ARGUMENTS<|call|>`, which
HarmonyParser (the tool-call parser of this format) then reads incrementally like any other format.

The markers are special tokens: they reach this text because the request preserves them wherever its output
is read as harmony (backends.tools.markers). `<|call|>` and `<|return|>` end gpt-oss's generation and are not
written: a message open at the end of the output ends there (finish). An output that does not open with a
header (a model that does not write harmony) is all content.
"""

from __future__ import annotations

import re

from backends.tools.parser import PartialCall, RegionParse, ToolCallParser
from backends.tools.reasoning import ReasoningDelta, partial_marker

MESSAGE, CHANNEL, START, CONSTRAIN = "<|message|>", "<|channel|>", "<|start|>", "<|constrain|>"
END, CALL, RETURN = "<|end|>", "<|call|>", "<|return|>"
_BODY_ENDS = (END, CALL, RETURN, START)  # <|start|>: a message whose end marker the model left out
_HEADER_OPENINGS = (CHANNEL, START, " to=", "to=")
CALL_OPEN = f"{CHANNEL}commentary to="  # the canonical call HarmonySplitter writes for HarmonyParser
FUNCTIONS = "functions."
# A header is a few tokens: one that runs on for longer than this without <|message|> is not a header.
MAX_HEADER_CHARS = 512

_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")


class HarmonySplitter:
    """Feed the output as it streams: the analysis channel comes out as reasoning, the rest as content (calls
    in their canonical form). Holds back only what may be the start of a marker."""

    def __init__(self) -> None:
        self._buffer = ""
        self._state = "start"  # start | header | body | plain
        self._destination = "content"  # the open body's: reasoning | content | call
        self._seen_body = False

    def feed(self, text: str) -> ReasoningDelta:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> ReasoningDelta:
        delta = self._drain(final=True)
        if self._state == "body" and self._destination == "call":
            delta = ReasoningDelta(delta.reasoning, delta.content + CALL)  # the output ended on <|call|>
        self._state = "plain"
        return delta

    def _drain(self, final: bool) -> ReasoningDelta:
        reasoning: list[str] = []
        content: list[str] = []
        while self._buffer:
            if self._state == "start":
                head = self._buffer.lstrip()
                if any(head.startswith(o) for o in _HEADER_OPENINGS):
                    self._state = "header"
                elif not final and any(o.startswith(head) for o in _HEADER_OPENINGS):
                    break  # may still become a header
                else:
                    self._state = "plain"  # not harmony: all of it is the answer
                continue
            if self._state == "plain":
                content.append(self._buffer)
                self._buffer = ""
                break
            if self._state == "header":
                at = self._buffer.find(MESSAGE)
                if at < 0:
                    if len(self._buffer) > MAX_HEADER_CHARS or (final and self._seen_body is False):
                        self._state = "plain"  # no header after all: what the model wrote is the answer
                        continue
                    if final:
                        self._buffer = ""  # a header cut off by the end of the output heads nothing
                    break
                self._open(self._buffer[:at], content)
                self._buffer = self._buffer[at + len(MESSAGE) :]
                continue
            # a body: up to the first end marker
            ends = [(at, marker) for marker in _BODY_ENDS if (at := self._buffer.find(marker)) >= 0]
            if ends:
                at, marker = min(ends)
                self._body(self._buffer[:at], reasoning, content)
                if self._destination == "call":
                    content.append(CALL)
                # <|start|> opens the next header itself; the other markers end this message
                self._buffer = self._buffer[at if marker == START else at + len(marker) :]
                self._state = "header"
                continue
            keep = 0 if final else max(partial_marker(self._buffer, m) for m in _BODY_ENDS)
            self._body(self._buffer[: len(self._buffer) - keep], reasoning, content)
            self._buffer = self._buffer[len(self._buffer) - keep :]
            break
        return ReasoningDelta("".join(reasoning), "".join(content))

    def _open(self, header: str, content: list[str]) -> None:
        channel = _CHANNEL.search(header)
        recipient = _RECIPIENT.search(header)
        self._state, self._seen_body = "body", True
        if recipient is not None and recipient.group(1) != "assistant":
            self._destination = "call"
            content.append(f"{CALL_OPEN}{recipient.group(1)}{MESSAGE}")
        elif channel is not None and channel.group(1) == "analysis":
            self._destination = "reasoning"
        else:
            self._destination = "content"  # final, and commentary to no one (a preamble to calls)

    def _body(self, text: str, reasoning: list[str], content: list[str]) -> None:
        if text:
            (reasoning if self._destination == "reasoning" else content).append(text)


class HarmonyParser(ToolCallParser):
    """The calls HarmonySplitter writes: `<|channel|>commentary to=functions.NAME<|message|>{...}<|call|>`.
    The arguments are the body as written (JSON where the model wrote JSON); the recipient's `functions.`
    namespace is not part of the name (a built-in tool's recipient, e.g. `browser.search`, stays whole)."""

    name = "harmony"
    start_markers = (CALL_OPEN,)
    marker_tokens = (START, CHANNEL, MESSAGE, CONSTRAIN, END, CALL, RETURN)

    def parse_region(self, region: str, marker: str, final: bool) -> RegionParse:
        at = region.find(MESSAGE)
        if at < 0:
            return RegionParse(invalid=final)
        recipient = region[:at]
        name = recipient[len(FUNCTIONS) :] if recipient.startswith(FUNCTIONS) else recipient
        body = region[at + len(MESSAGE) :]
        end = body.find(CALL)
        if end < 0:
            return RegionParse([PartialCall(name, body.strip())])
        call = PartialCall(name, body[:end].strip(), complete=True)
        return RegionParse([call], at + len(MESSAGE) + end + len(CALL))
