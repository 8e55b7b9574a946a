"""Thinking models write their reasoning between markers (`<think>` … `</think>`) before the answer; this
splits a streamed output into the two, holding back only what may be the start of a marker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

THINK_START, THINK_END = "<think>", "</think>"
MARKER_TOKENS = (THINK_START, THINK_END)  # where a vocabulary holds them as special tokens (DeepSeek-R1's)


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""


class ReasoningSplitter(Protocol):
    """What splits an output into reasoning and content: this module's `<think>` parser, or the channels of
    gpt-oss's harmony format (backends.tools.harmony)."""

    def feed(self, text: str) -> ReasoningDelta: ...

    def finish(self) -> ReasoningDelta: ...


class ReasoningParser:
    """`starts_inside`: the generation prompt already opened the reasoning (DeepSeek-R1's template ends
    in `<think>\\n`), so the output begins with reasoning and only the end marker appears."""

    def __init__(self, start: str = THINK_START, end: str = THINK_END, starts_inside: bool = False) -> None:
        self._start, self._end = start, end
        self._inside = starts_inside
        self._seen_content = False
        self._after_end = False  # templates put newlines after the end marker: not part of the answer
        self._buffer = ""

    def feed(self, text: str) -> ReasoningDelta:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> ReasoningDelta:
        return self._drain(final=True)

    def _drain(self, final: bool) -> ReasoningDelta:
        reasoning: list[str] = []
        content: list[str] = []
        while self._buffer:
            marker = self._end if self._inside else self._start
            at = self._buffer.find(marker)
            # the start marker counts only before any answer text: a later "<think>" is the answer's
            if at >= 0 and (self._inside or (not self._buffer[:at].strip() and not self._seen_content)):
                if self._inside:
                    reasoning.append(self._buffer[:at])  # before the start marker there is only space
                self._buffer = self._buffer[at + len(marker) :]
                self._inside = not self._inside
                self._after_end = not self._inside
                continue
            if self._after_end:
                self._buffer = self._buffer.lstrip("\n")
                if not self._buffer:
                    break
                self._after_end = False
            keep = 0 if final else partial_marker(self._buffer, marker)
            if not self._inside and not final and not self._seen_content and not self._buffer.strip():
                keep = len(self._buffer)  # only whitespace yet: the reasoning may still open
            piece, self._buffer = (
                self._buffer[: len(self._buffer) - keep],
                self._buffer[len(self._buffer) - keep :],
            )
            (reasoning if self._inside else content).append(piece)
            if not self._inside and piece.strip():
                self._seen_content = True
            break
        return ReasoningDelta("".join(reasoning), "".join(content))


def partial_marker(text: str, marker: str) -> int:
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
