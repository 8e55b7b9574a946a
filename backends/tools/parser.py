"""The incremental engine every tool-call format shares: content until a format's start marker, then a
region of calls that the format parses, re-read as it grows and reported as deltas.

Re-reading the open region on each piece costs O(n²) in the region's length, which is a few hundred
tokens for a call; it keeps each format a plain function of its text instead of a state machine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from backends.tools.events import (
    ContentDelta,
    ParsedToolCall,
    ParserEvent,
    ToolCallArguments,
    ToolCallBegin,
    ToolCallEnd,
)


@dataclass(slots=True)
class PartialCall:
    """A call as far as the text shows it. `arguments` only ever grows (raw JSON text, in order)."""

    name: str | None = None  # None: the region may still turn out to be no call
    arguments: str = ""
    complete: bool = False
    id: str | None = None


@dataclass(slots=True)
class RegionParse:
    calls: list[PartialCall] = field(default_factory=list)
    end: int | None = None  # just past the region in its text; None: the region is still open
    invalid: bool = False  # not tool calls after all: the region's text is content


@dataclass(slots=True)
class _Progress:
    name: str
    id: str | None
    arguments: str = ""
    ended: bool = False


class ToolCallParser(ABC):
    """Feed the output's text as it streams; events say what is content and what are calls."""

    name: ClassVar[str]
    start_markers: ClassVar[tuple[str, ...]] = ()
    # the marker texts this format's parser reads that a vocabulary may hold as special tokens, whose text
    # the backend then has to write (backends.tools.markers)
    marker_tokens: ClassVar[tuple[str, ...]] = ()
    # markers that open a region only at the very start of the output (e.g. a bare JSON object)
    leading_markers: ClassVar[tuple[str, ...]] = ()
    # a format whose generation prompt already opened a region (functionary's '>>>')
    starts_in_region: ClassVar[bool] = False

    def __init__(self, max_calls: int | None = None, leading: bool = True) -> None:
        """max_calls: calls after that many are not read, nor is anything after them (parallel_tool_calls
        false). leading: whether a leading marker opens a region; off where the grammar constrains only the
        calls that open with a start marker (strict functions under tool_choice auto), so that a bare
        object the grammar let through as text is not taken for a call."""
        self._max_calls = max_calls
        self._leading = leading
        self._text = ""
        self._settled = 0  # text before this is content already reported or consumed by regions
        self._region: int | None = 0 if self.starts_in_region else None  # where the open region's body is
        self._marker_at = 0
        self._marker = ""
        self._region_first = 0  # index of the open region's first call
        self._progress: list[_Progress] = []
        self._pending_space = ""  # whitespace after a call: content only if more content follows

    @abstractmethod
    def parse_region(self, region: str, marker: str, final: bool) -> RegionParse:
        """The calls in `region` (the text after `marker`, or from it for a leading marker)."""

    def feed(self, text: str) -> list[ParserEvent]:
        self._text += text
        return self._advance(final=False)

    def finish(self) -> list[ParserEvent]:
        """The end of the output: what was held back is released, open calls are closed."""
        return self._advance(final=True)

    @property
    def closed(self) -> bool:
        """max_calls calls are complete: nothing more will be read, the output may as well stop."""
        return self._limit_reached()

    @property
    def calls(self) -> list[ParsedToolCall]:
        return [ParsedToolCall(p.name, p.arguments, p.id) for p in self._progress]

    # ---- the engine -------------------------------------------------------------------------------------

    def _advance(self, final: bool) -> list[ParserEvent]:
        events: list[ParserEvent] = []
        while True:
            if self._region is None and self._limit_reached():
                self._settled = len(self._text)  # what follows the last call allowed is not read
                return events
            if self._region is None:
                found = self._find_start()
                if found is None:
                    safe = len(self._text) if final else len(self._text) - self._holdback()
                    self._content(events, self._settled, max(safe, self._settled))
                    self._settled = max(safe, self._settled)
                    return events
                self._content(events, self._settled, found[0])
                self._marker_at, self._region, self._marker = found
                self._region_first = len(self._progress)
            parse = self.parse_region(self._text[self._region :], self._marker, final)
            if parse.end is not None and self._region + parse.end <= self._marker_at:
                parse.invalid = True  # a region that consumed nothing would be found again, forever
            if parse.invalid and len(self._progress) == self._region_first:
                # not a call: the marker is content, and scanning goes on after it
                body = self._region if self._region > self._marker_at else self._marker_at + 1
                self._content(events, self._marker_at, body)
                self._settled, self._region = body, None
                continue
            self._sync(events, parse.calls)
            if parse.end is None and not final and not parse.invalid:
                return events
            for index in range(self._region_first, len(self._progress)):
                if not self._progress[index].ended:
                    self._progress[index].ended = True
                    events.append(ToolCallEnd(index))
            end = len(self._text) if parse.end is None else self._region + parse.end
            self._settled, self._region = end, None
            if final and end >= len(self._text):
                return events

    def _limit_reached(self) -> bool:
        limit = self._max_calls
        return limit is not None and len(self._progress) >= limit and all(p.ended for p in self._progress)

    def _find_start(self) -> tuple[int, int, str] | None:
        """(where the marker starts, where the region's body starts, the marker), earliest first."""
        best: tuple[int, int, str] | None = None
        for marker in self.start_markers:
            at = self._text.find(marker, self._settled)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, at + len(marker), marker)
        if self._leading and (self._settled == 0 or not self._text[: self._settled].strip()):
            first = len(self._text) - len(self._text.lstrip())
            for marker in self.leading_markers:
                if self._text.startswith(marker, first) and (best is None or first < best[0]):
                    best = (first, first, marker)  # a leading marker is part of its region
        return best

    def _holdback(self) -> int:
        """How much of the unsettled tail may still be the start of a marker."""
        tail = self._text[self._settled :]
        if self._leading and self.leading_markers and not self._text.strip():
            return len(tail)  # nothing but whitespace so far: a leading marker may follow
        longest = 0
        for marker in self.start_markers:
            for size in range(min(len(marker) - 1, len(tail)), longest, -1):
                if marker.startswith(tail[-size:]):
                    longest = size
                    break
        return longest

    def _content(self, events: list[ParserEvent], start: int, end: int) -> None:
        text = self._text[start:end]
        if not text:
            return
        if self._progress and not (self._pending_space + text).strip():
            self._pending_space += text  # whitespace between or after calls is not an answer
            return
        text, self._pending_space = self._pending_space + text, ""
        if events and isinstance(events[-1], ContentDelta):
            events[-1] = ContentDelta(events[-1].text + text)
        else:
            events.append(ContentDelta(text))

    def _sync(self, events: list[ParserEvent], calls: list[PartialCall]) -> None:
        for offset, call in enumerate(calls):
            index = self._region_first + offset
            if self._max_calls is not None and index >= self._max_calls:
                return
            if index == len(self._progress):
                if call.name is None:
                    return  # calls are reported in order: this one is not recognisable yet
                self._progress.append(_Progress(call.name, call.id))
                events.append(ToolCallBegin(index, call.name, call.id))
            progress = self._progress[index]
            if progress.ended:
                continue
            if call.arguments.startswith(progress.arguments) and len(call.arguments) > len(
                progress.arguments
            ):
                events.append(ToolCallArguments(index, call.arguments[len(progress.arguments) :]))
                progress.arguments = call.arguments
            if call.complete:
                progress.ended = True
                events.append(ToolCallEnd(index))
