"""What a request asks of sampling, in no protocol's words: OpenAI's fields and Ollama's options both map
into it, and the gateway resolves it against the model's defaults into backends.base.SamplingParams."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """None: the request leaves it to the model's defaults, then the protocol's."""

    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    logit_bias: Mapping[str, float] = field(default_factory=dict)  # keys as sent; checked per model
    ignore_eos: bool = False
    min_tokens: int = 0
