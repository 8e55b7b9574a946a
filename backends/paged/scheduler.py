"""Iteration-level continuous batching: which sequences compute how many tokens in the next step.

Each step fills a token budget (max_num_batched_tokens) and a sequence budget (max_num_seqs): first one
token for every running sequence that is decoding, then prefill chunks for running sequences still
prefilling, then new (or preempted) requests from the front of the waiting queue, so new requests join a
running batch at once and long prompts are cut into chunks. When blocks run out, the most recently arrived
running sequence is preempted by recompute: its blocks are freed and it goes back to the front of the
queue, to recompute prompt + output so far when blocks are available again.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from backends.base import FinishReason
from backends.paged.block_manager import BlockManager
from backends.paged.config import EngineConfig
from backends.paged.sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int  # tokens computed this step, from seq.num_computed_tokens on
    samples: bool  # the chunk reaches the last token, so the step samples the next one


@dataclass(slots=True)
class SchedulerOutput:
    """Decodes (one new token each) first, then prefill chunks: the model runner keeps this order."""

    scheduled: list[ScheduledSeq] = field(default_factory=list)
    num_decodes: int = 0
    num_batched_tokens: int = 0
    preempted: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()  # aborted entries stay until they reach the front
        self.running: list[Sequence] = []  # by arrival; finished ones are dropped at the next schedule()
        self._num_waiting = 0  # live entries in `waiting`
        self.num_preemptions = 0

    # --- queue -------------------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    @property
    def num_running(self) -> int:
        return sum(1 for s in self.running if s.status is SequenceStatus.RUNNING)

    @property
    def is_full(self) -> bool:
        return self._num_waiting >= self.config.max_waiting_requests

    def has_work(self) -> bool:
        return self._num_waiting > 0 or any(s.status is SequenceStatus.RUNNING for s in self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self._num_waiting += 1

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Finish or abort a sequence wherever it is; its blocks return to the pool now."""
        if seq.status in (SequenceStatus.WAITING, SequenceStatus.PREEMPTED):
            self._num_waiting -= 1
        self.block_manager.free(seq)
        seq.finish(reason)

    # --- the step ----------------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        self.running = [s for s in self.running if s.status is SequenceStatus.RUNNING]
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        chunk = self.config.prefill_chunk
        bm = self.block_manager
        scheduled: set[int] = set()
        decodes = [s for s in self.running if s.num_uncomputed_tokens == 1]
        prefills = [s for s in self.running if s.num_uncomputed_tokens > 1]

        for seq in decodes:
            if budget == 0:
                break
            if seq.status is SequenceStatus.RUNNING and self._make_room(seq, 1, scheduled, out):
                bm.append_slots(seq, 1)
                budget -= self._add(out, seq, 1, scheduled)
        out.num_decodes = len(out.scheduled)

        for seq in prefills:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            n = min(seq.num_uncomputed_tokens, budget, chunk)
            if not bm.can_append(seq, n):
                # Shrink the chunk to what the free blocks hold before preempting anyone.
                n = min(
                    n, (len(seq.block_table) + bm.num_free_blocks) * bm.block_size - seq.num_computed_tokens
                )
            if n <= 0:
                n = 1
                if not self._make_room(seq, n, scheduled, out):
                    continue
            bm.append_slots(seq, n)
            budget -= self._add(out, seq, n, scheduled)

        if out.preempted:
            self.running = [s for s in self.running if s.status is SequenceStatus.RUNNING]
        else:
            budget = self._admit_waiting(out, budget, chunk, scheduled)
        out.num_batched_tokens = self.config.max_num_batched_tokens - budget
        return out

    def _admit_waiting(self, out: SchedulerOutput, budget: int, chunk: int, scheduled: set[int]) -> int:
        bm = self.block_manager
        num_running = len(self.running)
        being_computed: set[bytes] = set()  # prefixes a sequence admitted in this step will compute
        # LoRA: running sequences use at most max_loras distinct adapters (the device slots), so every
        # step's adapters fit. A request whose adapter would exceed that waits (in its place) while the
        # requests behind it may start: its turn comes when an adapter's last sequence ends.
        adapters = {s.adapter.uid for s in self.running if s.adapter is not None}
        lora_blocked: list[Sequence] = []
        while self.waiting and budget > 0 and num_running < self.config.max_num_seqs:
            seq = self.waiting[0]
            if seq.is_finished:  # aborted while queued
                self.waiting.popleft()
                continue
            if (
                seq.adapter is not None
                and seq.adapter.uid not in adapters
                and len(adapters) >= self.config.max_loras
            ):
                lora_blocked.append(self.waiting.popleft())
                continue
            match = bm.match_prefix(seq)
            prefix = bm.first_uncached_hash(seq, match)
            if prefix is not None and prefix in being_computed:
                # Its prefix is being computed right now (n > 1 choices, or identical prompts arriving
                # together): next step it is in the cache, and this sequence shares those blocks.
                break
            n = min(seq.num_tokens - match.num_blocks * bm.block_size, budget, chunk)
            if not bm.can_admit(seq, match, n):
                break  # FCFS: nobody overtakes the head of the queue
            self.waiting.popleft()
            self._num_waiting -= 1
            bm.admit(seq, match, n)
            if prefix is not None:
                being_computed.add(prefix)
            seq.start_running()
            bisect.insort(self.running, seq, key=lambda s: s.arrival)
            if seq.adapter is not None:
                adapters.add(seq.adapter.uid)
            num_running += 1
            budget -= self._add(out, seq, n, scheduled)
        self.waiting.extendleft(reversed(lora_blocked))
        return budget

    def _make_room(self, seq: Sequence, n: int, scheduled: set[int], out: SchedulerOutput) -> bool:
        """Preempt the latest-arrived unscheduled running sequences until `seq` can take `n` tokens.

        False when `seq` itself was the one preempted.
        """
        while not self.block_manager.can_append(seq, n):
            victim = next(
                s
                for s in reversed(self.running)
                if s.status is SequenceStatus.RUNNING and id(s) not in scheduled
            )
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.block_manager.free(seq)
        seq.preempt()
        self.waiting.appendleft(seq)
        self._num_waiting += 1
        self.num_preemptions += 1
        out.preempted.append(seq.request_id)

    @staticmethod
    def _add(out: SchedulerOutput, seq: Sequence, n: int, scheduled: set[int]) -> int:
        samples = seq.num_computed_tokens + n == seq.num_tokens
        out.scheduled.append(ScheduledSeq(seq, n, samples))
        scheduled.add(id(seq))
        return n

    def commit(self, out: SchedulerOutput) -> None:
        """The step ran: its tokens now have KV in the cache; offer the newly full blocks to the cache."""
        for item in out.scheduled:
            item.seq.mark_computed(item.num_new_tokens)
            self.block_manager.register_computed(item.seq)
