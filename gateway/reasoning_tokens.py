"""How many of an output's tokens were reasoning: the Responses API's output_tokens_details.reasoning_tokens.

Counted from what the output's reader made of each chunk as it arrived: a chunk whose events are all
reasoning text is reasoning, one with answer text or a call is answer. A chunk that added no event (a
`<think>` or `</think>` marker, a harmony header, text held back until it is known not to be a marker)
counts with the chunk before it, or, at the start, with the first chunk after it that added an event: the
markers that open and close a model's reasoning count as reasoning, as OpenAI counts them.
"""

from __future__ import annotations

from gateway.tool_calls import OutputEvent, ReasoningText


class ReasoningTokens:
    def __init__(self) -> None:
        self.count = 0
        self._last_was_reasoning: bool | None = None  # None: no chunk has added an event yet
        self._leading = 0  # tokens of the eventless chunks at the start

    def add(self, events: list[OutputEvent], tokens: int) -> None:
        if not events:
            if self._last_was_reasoning is None:
                self._leading += tokens
            elif self._last_was_reasoning:
                self.count += tokens
            return
        reasoning = all(isinstance(event, ReasoningText) for event in events)
        if self._last_was_reasoning is None:
            tokens, self._leading = tokens + self._leading, 0
        self._last_was_reasoning = reasoning
        if reasoning:
            self.count += tokens
