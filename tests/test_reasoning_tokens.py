"""Responses' output_tokens_details.reasoning_tokens: the tokens of an output its reader read as reasoning,
with the markers around it (gateway.reasoning_tokens)."""

from __future__ import annotations

from gateway.reasoning_tokens import ReasoningTokens
from gateway.tool_calls import ToolPlan


def _count(plan: ToolPlan, pieces: list[str]) -> tuple[int, str, str]:
    """Each piece one token, read as a stream is read: (reasoning tokens, the reasoning, the answer)."""
    reader, counted = plan.new_reader(), ReasoningTokens()
    for i, piece in enumerate(pieces):
        events = reader.feed(piece) + (reader.finish() if i == len(pieces) - 1 else [])
        counted.add(events, 1)
    return counted.count, reader.reasoning, reader.content


def test_a_think_block_and_its_markers_are_reasoning_the_answer_is_not():
    pieces = ["<think>", "\n", "Paris", " is", " the", " capital", ".", "</think>", "\n\n", "Paris", "."]
    count, reasoning, answer = _count(ToolPlan(None, reasoning=True), pieces)
    assert reasoning.strip() == "Paris is the capital." and answer == "Paris."
    assert count == 9  # <think> through the newlines after </think>: all but the answer's two tokens


def test_an_output_that_starts_inside_its_reasoning():
    pieces = ["Let", " me", " see", ".", "</think>", "Yes", "."]
    count, _, answer = _count(ToolPlan(None, reasoning=True, reasoning_open=True), pieces)
    assert answer == "Yes." and count == 5


def test_no_reasoning_no_reasoning_tokens():
    count, reasoning, answer = _count(ToolPlan(None, reasoning=True), ["Hello", ",", " world", "."])
    assert (count, reasoning, answer) == (0, "", "Hello, world.")


def test_harmony_analysis_is_reasoning_the_final_channel_is_not():
    pieces = ["<|channel|>", "analysis", "<|message|>", "Think", "ing", ".", "<|end|>", "<|start|>",
              "assistant", "<|channel|>", "final", "<|message|>", "Done", "."]  # fmt: skip
    count, reasoning, answer = _count(ToolPlan(None, channels=True), pieces)
    assert reasoning == "Thinking." and answer == "Done."
    # the analysis header and body, and the final message's header, which adds nothing before its text
    assert count == 12


def test_a_remote_upstreams_count_is_passed_on():
    from gateway.remote_serving import upstream_reasoning_tokens

    usage = {"completion_tokens": 30, "completion_tokens_details": {"reasoning_tokens": 21}}
    assert upstream_reasoning_tokens({"usage": usage}) == 21
    assert upstream_reasoning_tokens({"usage": {"completion_tokens": 3}}) == 0
    assert upstream_reasoning_tokens({"choices": []}) == 0
