"""Slots over one llama.cpp context: which sequence id holds which tokens' KV, room in the shared pool, and
prefix reuse (llama-server's slots with cache_prompt, in tandem's accounting).

A slot is one llama.cpp sequence id. Its `tokens` are exactly the tokens whose KV the sequence holds
(position i holds tokens[i]). A slot stays with its tokens after its request ends: the next request whose
prompt starts with them takes that slot and prefills only the rest (turn 2 of a chat). A prefix held by a
slot still generating is copied (llama_memory_seq_cp shares the cells) into a free slot instead.

Room: split KV (the default), each slot has its own cells, as many as the context length: a free slot is
room enough, and an idle slot's tokens stay until the slot is reused; copying a running slot's prefix
copies its whole stream (llama.cpp's way), so a prefix too short to be worth that is computed instead
(MIN_COPIED_TOKENS, or 1/256 of a stream). Unified KV, the slots share one pool:
a request reserves the most cells it can ever hold (prompt + max_tokens, capped at the context length)
when it is placed, so a running sequence never runs out and nothing is preempted; a request that does not
fit waits. Idle slots' tokens are a cache, evicted (least recently used first) when room is needed.
Copied prefixes are counted in both slots, so the count is an upper bound of the cells llama.cpp uses.

LoRA: KV computed under one adapter set is valid for that set only, so a slot remembers the set its tokens
were computed with and a prefix is reused (kept or copied) only by a request of the same set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from backends.llamacpp.adapters import BASE, AdapterSet


class KvMemory(Protocol):
    def remove(self, seq_id: int, start: int = 0) -> None: ...

    def copy(self, source: int, target: int, length: int) -> None: ...


@dataclass(slots=True, eq=False)
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # whose KV this sequence holds, by position
    busy: bool = False
    reserved: int = 0  # cells reserved by the request running here
    last_used: int = 0  # placement tick, for LRU eviction
    adapters: AdapterSet = BASE  # the LoRA adapters its tokens' KV was computed with


@dataclass(frozen=True, slots=True)
class Placement:
    slot: Slot
    reused: int  # prompt tokens whose KV the slot holds now: prefill starts after them


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differs = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differs[0]) if differs.size else n


MIN_COPIED_TOKENS = 32


class SlotPool:
    def __init__(self, memory: KvMemory, sequences: int, cells: int, *, shared: bool) -> None:
        """shared: the slots' cells are one pool (unified KV); else each has cells/sequences of its own,
        at least any request's need."""
        self._memory = memory
        self.slots = [Slot(i) for i in range(sequences)]
        self.cells = cells
        self.shared = shared
        # the shortest prefix copied from a running slot: sharing cells costs nothing, a stream copy does
        self.min_copied = 1 if shared else max(MIN_COPIED_TOKENS, cells // sequences // 256)
        self._tick = 0

    @property
    def live_cells(self) -> int:
        """Cells holding the KV of running requests (vLLM's kv_cache_usage counts these)."""
        return sum(len(s.tokens) for s in self.slots if s.busy)

    @property
    def cached_cells(self) -> int:
        """Cells idle slots keep for prefix reuse (free to evict)."""
        return sum(len(s.tokens) for s in self.slots if not s.busy)

    def place(self, prompt: list[int], need: int, adapters: AdapterSet = BASE) -> Placement | None:
        """A slot for a request needing `need` cells whose prompt is `prompt`, run with `adapters`, its KV
        made ready up to the reused prefix; None when no slot is free or the pool has no room yet (the
        request waits). Only slots of the same adapter set offer a prefix."""
        idle = [s for s in self.slots if not s.busy]
        reserved = sum(s.reserved for s in self.slots if s.busy) if self.shared else 0
        if not idle or reserved + need > self.cells:
            return None  # checked before matching prefixes: a waiting request retries this every step
        limit = len(prompt) - 1  # at least one prompt token is computed: its logits start the output
        best_idle, idle_match = self._best(idle, prompt, limit, adapters)
        busy = [s for s in self.slots if s.busy]
        best_busy, busy_match = self._best(busy, prompt, limit, adapters) if busy else (None, 0)
        if best_busy is not None and busy_match > idle_match and busy_match >= self.min_copied:
            # a running request holds a longer prefix: copy it into the idle slot least worth keeping
            target = min(idle, key=lambda s: (len(s.tokens) > 0, s.last_used))
            source, reused = best_busy, busy_match
        elif idle_match > 0:
            target, source, reused = best_idle, None, idle_match
        else:
            target = min(idle, key=lambda s: (len(s.tokens) > 0, s.last_used))
            source, reused = None, 0
        if self.shared:
            self._evict_for(reserved + need, target)
        if source is not None:
            self._memory.remove(target.seq_id)
            self._memory.copy(source.seq_id, target.seq_id, reused)
            target.tokens = source.tokens[:reused]
        else:
            self.truncate(target, reused)  # to 0 for a slot of another adapter set (its match is 0)
        self._tick += 1
        target.busy, target.reserved, target.last_used = True, need, self._tick
        target.adapters = adapters
        return Placement(target, reused)

    @staticmethod
    def _best(slots: list[Slot], prompt: list[int], limit: int, adapters: AdapterSet) -> tuple[Slot, int]:
        def reusable(s: Slot) -> int:  # KV of another adapter set is no prefix of this request's
            return min(common_prefix(s.tokens, prompt), limit) if s.adapters == adapters else 0

        matches = [(reusable(s), -s.last_used, s.seq_id) for s in slots]
        match, _, seq_id = max(matches)
        return next(s for s in slots if s.seq_id == seq_id), max(match, 0)

    def _evict_for(self, reserved: int, target: Slot) -> None:
        """Empty idle slots other than `target` (least recently used first) until the cells they cache fit
        beside the `reserved` ones (the placed request's included)."""
        others = sorted((s for s in self.slots if not s.busy and s is not target), key=lambda s: s.last_used)
        cached = sum(len(s.tokens) for s in others)
        for slot in others:
            if reserved + cached <= self.cells:
                break
            cached -= len(slot.tokens)
            self.truncate(slot, 0)

    def truncate(self, slot: Slot, length: int) -> None:
        if length < len(slot.tokens):
            self._memory.remove(slot.seq_id, length)
            del slot.tokens[length:]

    def forget(self, stale: Callable[[AdapterSet], bool]) -> None:
        """Drop the cached KV of idle slots whose adapter set is stale (an adapter removed)."""
        for slot in self.slots:
            if not slot.busy and stale(slot.adapters):
                self.truncate(slot, 0)
                slot.adapters = BASE

    def release(self, slot: Slot, *, keep: bool) -> None:
        """The request in `slot` ended; keep its tokens for reuse, or free its cells now."""
        slot.busy, slot.reserved = False, 0
        if not keep:
            self.truncate(slot, 0)
