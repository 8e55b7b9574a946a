"""Token bytes in, displayable text out: shared by every backend's generation loop."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextAssembler:
    """Turns each new token's bytes into the text that may be shown now.

    Holds back only what could still change: an incomplete UTF-8 sequence (an emoji split across
    tokens) and a tail that might be the start of a stop string. Invalid bytes become U+FFFD at once
    rather than stalling the stream, since random-weight and real models both emit them.
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._pending = ""  # decoded text not yet released because it may begin a stop string
        self.stopped = False  # a stop string was found; nothing more is released
        self.matched_stop: str | None = None  # which one (the earliest in the text)

    def push(self, token_bytes: bytes) -> str:
        """Add one token's bytes; return the newly releasable text."""
        if self.stopped:
            return ""
        return self._release(self._decoder.decode(token_bytes))

    def finish(self) -> str:
        """The generation ended: release what was held back (a dangling partial sequence as U+FFFD)."""
        if self.stopped:
            return ""
        text = self._release(self._decoder.decode(b"", final=True))
        text, self._pending = text + self._pending, ""
        return text

    def _release(self, new_text: str) -> str:
        if not self._stop:
            return new_text
        buffer = self._pending + new_text
        hits = [(at, stop) for stop in self._stop if (at := buffer.find(stop)) >= 0]
        if hits:
            cut, self.matched_stop = min(hits)
            self.stopped = True
            self._pending = ""
            return buffer[:cut]
        hold = self._longest_stop_prefix_suffix(buffer)
        self._pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold]

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stop:
            for length in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:length]):
                    best = length
                    break
        return best
