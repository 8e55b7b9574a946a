"""One request inside the engine: its tokens, its KV blocks, its progress, its lifecycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING

from backends.base import FinishReason, SamplingParams

if TYPE_CHECKING:
    import torch

    from backends.paged.lora import LoraAdapter
    from backends.structured import GrammarMatcher


class SequenceStatus(Enum):
    WAITING = auto()  # queued, never scheduled
    RUNNING = auto()  # holds KV blocks; scheduled each step while it has work
    PREEMPTED = auto()  # lost its blocks to make room; queued again to recompute prompt + output so far
    FINISHED = auto()  # done (stop, length or abort); holds nothing


class IllegalTransition(RuntimeError):
    pass


@dataclass(eq=False, slots=True)
class Sequence:
    """Token ids (prompt then output), block table, and how many tokens already have KV in the cache.

    `num_computed_tokens` counts tokens whose keys/values are in this sequence's blocks. The tokens still
    to compute are `token_ids[num_computed_tokens:]`: the whole prompt at first, one token per decode step,
    and prompt + output so far after a preemption.
    """

    request_id: str
    token_ids: list[int]
    params: SamplingParams
    arrival: int  # monotonic admission order: FCFS, and preemption picks the latest
    generator: torch.Generator | None = None  # only for seeded requests
    # Only for structured output. It has accepted every output token so far and survives preemption:
    # recompute replays tokens through the model, never through the grammar.
    grammar: GrammarMatcher | None = None
    adapter: LoraAdapter | None = None  # the LoRA adapter it runs on (None: the base model)
    num_prompt_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # chained hashes of full blocks, computed lazily
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prefix-cache hit at the last admission
    num_registered_blocks: int = 0  # leading full blocks already offered to the prefix cache
    finish_reason: FinishReason | None = None
    arrival_time: float = 0.0  # time.monotonic() when queued (for the queue/prefill/decode histograms)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.token_ids)

    # --- views -------------------------------------------------------------------------------------------
    @property
    def cache_salt(self) -> bytes | None:
        """Seeds the chain of block hashes: KV computed under one adapter never serves another."""
        return None if self.adapter is None else self.adapter.cache_salt

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start_running(self) -> None:
        self._expect(SequenceStatus.WAITING, SequenceStatus.PREEMPTED)
        self.status = SequenceStatus.RUNNING

    def preempt(self) -> None:
        """Blocks were freed by the block manager: everything is recomputed on readmission."""
        self._expect(SequenceStatus.RUNNING)
        self.status = SequenceStatus.PREEMPTED
        self.block_table = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0

    def finish(self, reason: FinishReason) -> None:
        if self.status is SequenceStatus.FINISHED:
            raise IllegalTransition(f"{self.request_id}: already finished")
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason

    # --- progress ----------------------------------------------------------------------------------------
    def mark_computed(self, num_tokens: int) -> None:
        self.num_computed_tokens += num_tokens
        assert self.num_computed_tokens <= len(self.token_ids)

    def append_token(self, token_id: int) -> None:
        self._expect(SequenceStatus.RUNNING)
        self.token_ids.append(token_id)

    def _expect(self, *allowed: SequenceStatus) -> None:
        if self.status not in allowed:
            raise IllegalTransition(f"{self.request_id}: illegal in state {self.status.name}")
