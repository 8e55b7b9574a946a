"""The synchronous batching core of the dev backend: add requests, step (schedule -> run -> postprocess).

Each step is one llama_decode over one batch: the next token of every running sequence, then prompt
chunks of newly placed ones (at most PREFILL_CHUNK prompt tokens a step, so a long prompt does not stall
the running decodes). A request placed between steps joins the next one (continuous batching). Sampling
is tandem's own, per sequence (backends.llamacpp.sampler): a sequence's tokens depend on its own seed
and logits only, whatever else shares the batch.

LoRA adapters (backends.llamacpp.adapters): llama.cpp applies one adapter set to a whole context, so a step
runs the sequences of one set only (AdapterTurns picks it: the current set while it has work, rotating
when others wait) and the context's set is switched between steps. Adding and removing adapters happens
here too, between steps: llama.cpp's model and LlamaAdapters are not safe to change under a decode.

Single-threaded: the backend's worker thread owns the engine; stats() only reads counters.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backends.base import (
    BackendError,
    FinishReason,
    GenerationChunk,
    GenerationFailedError,
    GenerationRequest,
)
from backends.llamacpp.adapters import BASE, AdapterSet, AdapterTurns, LlamaAdapters, adapter_set
from backends.llamacpp.batch import BatchContext, ContextShape, DecodeError
from backends.llamacpp.sampler import SequenceSampler
from backends.llamacpp.session import LlamaSession
from backends.llamacpp.slots import Slot, SlotPool
from backends.stats import COUNT_BUCKETS, LATENCY_BUCKETS_S, EngineStats, Histogram
from backends.streams import ChunkSink
from backends.structured import GrammarMatcher, InvalidStructuredOutputError
from backends.text_stream import TextAssembler

logger = logging.getLogger("tandem.llamacpp")

PREFILL_CHUNK = 256  # prompt tokens per step, over all sequences being prefilled
_SPANS_KEPT = 256


@dataclass(slots=True)
class SequenceSpan:
    """When a request ran, in engine steps (tests and debugging read these, not wall-clock times)."""

    request_id: str
    placed_step: int  # the first step it was part of
    first_token_step: int | None = None
    finished_step: int | None = None


@dataclass(slots=True, eq=False)
class _Sequence:
    request: GenerationRequest
    sink: ChunkSink
    sampler: SequenceSampler
    grammar: GrammarMatcher | None
    assembler: TextAssembler
    need: int  # KV cells it may come to hold
    arrival: float
    tokens: list[int]  # prompt, then the generated tokens
    generated: int = 0
    cached: int = 0  # prompt tokens its slot held when placed
    slot: Slot | None = None
    placed: float = 0.0
    first_token: float | None = None
    span: SequenceSpan | None = None
    adapters: AdapterSet = BASE  # the LoRA adapters it runs with

    @property
    def pending(self) -> int:
        """Tokens not yet in the KV (1 while decoding: the last sampled token)."""
        assert self.slot is not None
        return len(self.tokens) - len(self.slot.tokens)


@dataclass(slots=True)
class _Counters:
    steps: int = 0
    prefix_queries: int = 0  # prompt tokens of placed requests
    prefix_hits: int = 0  # of those, found in a slot's KV and not computed
    prompt_computed: int = 0  # prompt tokens run through the model
    generated: int = 0
    batch_size: Histogram = field(default_factory=lambda: Histogram(COUNT_BUCKETS))
    batch_tokens: Histogram = field(default_factory=lambda: Histogram(COUNT_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    prefill_time: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    decode_time: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))


class BatchEngine:
    def __init__(
        self,
        session: LlamaSession,
        *,
        parallel: int,
        context_length: int,
        cells: int,
        kv_unified: bool = False,
        on_end: Callable[[], None] = lambda: None,
        model_name: str = "model",
    ) -> None:
        """cells: over all sequences (kv_unified: one pool they share; else cells/parallel each).
        on_end: called once per added request when it leaves the engine (finished, failed, aborted),
        before its last chunk is put: the client never sees its end before the engine has freed it."""
        self._session = session
        self._on_end = on_end
        self.model_name = model_name
        shape = ContextShape(cells, parallel, PREFILL_CHUNK + parallel, session.threads, kv_unified)
        self._context = BatchContext(session.model, session.vocab_size, shape)
        self.parallel = parallel
        # no sequence outgrows its cells
        self.context_length = min(context_length, self._context.cells_per_sequence)
        self.pool = SlotPool(self._context, parallel, self._context.cells, shared=kv_unified)
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []  # metrics() reads its len() from other threads, as _waiting's
        self.counters = _Counters()
        self.spans: collections.deque[SequenceSpan] = collections.deque(maxlen=_SPANS_KEPT)
        self.adapters = LlamaAdapters(session.model, session.path)
        self.adapter_names: tuple[str, ...] = ()  # a snapshot other threads may read
        self.turns = AdapterTurns()
        self._last_ran: dict[AdapterSet, float] = {}  # when each set with work last had a step

    # --- LoRA adapters (between steps) -------------------------------------------------------------------
    def add_adapter(self, name: str, path: Path, scale: float = 1.0) -> None:
        """Load a GGUF LoRA adapter; AdapterLoadError (nothing loaded) when it cannot run on this model."""
        self.adapters.add(name, path, scale)
        self.adapter_names = tuple(self.adapters.names())

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter. The gateway refuses a removal while the adapter has requests in flight; one
        that raced past it fails with an error naming why (its adapter's tensors are about to be freed)."""
        if name not in self.adapter_names:
            raise BackendError(f"model {self.model_name!r} has no LoRA adapter {name!r}")
        error = BackendError(f"model {self.model_name!r}: LoRA adapter {name!r} was removed")
        for seq in [seq for seq in self._running if name in seq.adapters]:
            self._end(seq, error)
        for seq in self._take_waiting(lambda seq: name in seq.adapters):
            self._on_end()
            seq.sink.put(error)
        # KV computed with it is wrong for anything else (an adapter of the same name added later too)
        self.pool.forget(lambda adapters: name in adapters)
        self.adapters.remove(name)
        self.adapter_names = tuple(self.adapters.names())

    # --- requests ----------------------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def sinks(self) -> list[ChunkSink]:
        return [seq.sink for seq in (*self._running, *self._waiting)]

    def add(self, request: GenerationRequest, sink: ChunkSink, arrival: float) -> bool:
        """Queue a request; False when it was refused at once (its stream raises why) or already cancelled."""
        if sink.cancelled:
            logger.info("request %s aborted after 0 tokens (before it was queued)", request.request_id)
            return False
        prompt, params = request.prompt_token_ids, request.sampling
        if request.adapter is not None and request.adapter not in self.adapter_names:
            loaded = ", ".join(self.adapter_names) or "none"
            sink.put(
                BackendError(
                    f"model {self.model_name!r} has no LoRA adapter {request.adapter!r} (loaded: {loaded})"
                )
            )
            return False
        if not prompt or len(prompt) >= self.context_length:
            problem = f"the prompt has {len(prompt)} tokens; the context holds {self.context_length}"
            sink.put(BackendError(problem))
            return False
        grammar = None
        if params.structured is not None:
            try:
                grammar = self._session.matcher(params.structured)
            except InvalidStructuredOutputError as exc:  # the request's fault: the stream raises it
                sink.put(exc)
                return False
        session = self._session
        seq = _Sequence(
            request,
            sink,
            SequenceSampler(params, prompt, session.vocab_size, session.eos_ids),
            grammar,
            TextAssembler(params.stop),
            need=min(len(prompt) + max(params.max_tokens, 1), self.context_length),
            arrival=arrival,
            tokens=list(prompt),
            adapters=adapter_set(request.adapter),
        )
        self._waiting.append(seq)
        return True

    # --- the step ----------------------------------------------------------------------------------------
    def step(self) -> None:
        """One decode over the running batch, then each sequence with logits samples its next token."""
        self._drop_cancelled()
        self._place_waiting()
        adapters, scheduled = self._schedule()
        if not scheduled:
            return
        self.adapters.apply(self._context.handle, adapters)  # free when the context has this set already
        c = self.counters
        c.steps += 1
        c.batch_size.observe(len(scheduled))
        c.batch_tokens.observe(self._context.batch_size)
        try:
            self._context.decode()
        except DecodeError as exc:
            logger.error("%s: failing the %d requests in the batch", exc, len(scheduled))
            for seq, _, _ in scheduled:
                self._end(seq, GenerationFailedError(f"generation failed: {exc}"))
            return
        for seq, count, logits_index in scheduled:
            assert seq.slot is not None
            seq.slot.tokens.extend(seq.tokens[len(seq.slot.tokens) : len(seq.slot.tokens) + count])
            if logits_index is None:
                continue
            try:
                chunk = self._advance(seq, self._context.logits(logits_index))
            except Exception as exc:  # this request fails, the others and the engine go on
                logger.exception("generation failed for %s", seq.request.request_id)
                self._end(seq, GenerationFailedError(f"generation failed: {exc!r}"))
                continue
            if chunk.finish_reason is not None:
                self._end(seq, chunk)
            else:
                seq.sink.put(chunk)

    def _drop_cancelled(self) -> None:
        for seq in [seq for seq in self._running if seq.sink.cancelled]:
            logger.info("request %s aborted after %d tokens", seq.request.request_id, seq.generated)
            self._end(seq, None, keep=False)  # frees its cells now
        for seq in self._take_waiting(lambda seq: seq.sink.cancelled):
            logger.info("request %s aborted after 0 tokens (waiting)", seq.request.request_id)
            self._on_end()

    def _take_waiting(self, picked: Callable[[_Sequence], bool]) -> list[_Sequence]:
        """Take the waiting sequences `picked` selects out of the queue (the caller ends each). `picked` is
        asked once per sequence: a cancel from another thread between two asks would drop one unended."""
        taken = [seq for seq in self._waiting if picked(seq)]
        if taken:  # most steps take none: keep the deque
            gone = set(taken)  # by identity (eq=False)
            self._waiting = collections.deque(seq for seq in self._waiting if seq not in gone)
        return taken

    def _place_waiting(self) -> None:
        """First come, first placed: a request that does not fit yet holds back those behind it."""
        while self._waiting:
            seq = self._waiting[0]
            placement = self.pool.place(seq.tokens, seq.need, seq.adapters)
            if placement is None:
                return
            self._waiting.popleft()
            seq.slot, seq.placed, seq.cached = placement.slot, time.monotonic(), placement.reused
            seq.span = SequenceSpan(seq.request.request_id, self.counters.steps + 1)
            self.spans.append(seq.span)
            c = self.counters
            c.prefix_queries += len(seq.tokens)
            c.prefix_hits += placement.reused
            c.queue_time.observe(seq.placed - seq.arrival)
            self._running.append(seq)

    def _choose_adapters(self) -> AdapterSet | None:
        """The adapter set this step runs (one per decode): AdapterTurns' pick, each set ranked by how long
        it has waited (its oldest sequence's arrival, or its last step if later)."""
        if not self.adapter_names:  # no adapter loaded: every step is the base's (most models)
            return BASE if self._running else None
        waited: dict[AdapterSet, float] = {}
        for seq in self._running:
            waited[seq.adapters] = min(waited.get(seq.adapters, seq.arrival), seq.arrival)
        for adapters in waited:
            waited[adapters] = max(waited[adapters], self._last_ran.get(adapters, waited[adapters]))
        chosen = self.turns.choose(waited)
        self._last_ran = {s: t for s, t in self._last_ran.items() if s in waited}
        if chosen is not None:
            self._last_ran[chosen] = time.monotonic()
        return chosen

    def _schedule(self) -> tuple[AdapterSet, list[tuple[_Sequence, int, int | None]]]:
        """Fill the batch with sequences of one adapter set: that set and (sequence, tokens added, index of
        the token whose logits it samples from)."""
        ctx = self._context
        ctx.clear()
        scheduled: list[tuple[_Sequence, int, int | None]] = []
        chosen = self._choose_adapters()
        if chosen is None:
            return BASE, scheduled
        prefilling = []
        for seq in (seq for seq in self._running if seq.adapters == chosen):
            if seq.pending == 1:
                token, pos = seq.tokens[-1], len(seq.tokens) - 1
                scheduled.append((seq, 1, ctx.add(token, pos, self._seq_id(seq), logits=True)))
            else:
                prefilling.append(seq)
        budget = PREFILL_CHUNK
        for seq in prefilling:  # in the order they were placed
            if budget == 0:
                break
            start = len(seq.tokens) - seq.pending
            count = min(seq.pending, budget)
            budget -= count
            index, seq_id, last = None, self._seq_id(seq), len(seq.tokens) - 1
            for pos in range(start, start + count):
                index = ctx.add(seq.tokens[pos], pos, seq_id, logits=pos == last)
            self.counters.prompt_computed += count
            scheduled.append((seq, count, index if start + count == len(seq.tokens) else None))
        return chosen, scheduled

    @staticmethod
    def _seq_id(seq: _Sequence) -> int:
        assert seq.slot is not None
        return seq.slot.seq_id

    def _advance(self, seq: _Sequence, logits: np.ndarray) -> GenerationChunk:
        """Sample the next token from `logits`: the chunk to stream (its last has finish_reason set)."""
        session, params, grammar = self._session, seq.request.sampling, seq.grammar
        sampled = seq.sampler.sample(logits, grammar.allowed_mask() if grammar else None)
        token = sampled.token_id
        seq.generated += 1
        self.counters.generated += 1
        if seq.first_token is None:
            seq.first_token = time.monotonic()
            self.counters.prefill_time.observe(seq.first_token - seq.placed)
            assert seq.span is not None
            seq.span.first_token_step = self.counters.steps
        logprobs = [session.logprob(sampled)] if params.logprobs is not None else None
        if grammar is not None and not grammar.accept(token):
            raise RuntimeError(f"token {token} sampled against the grammar's mask")
        # A terminated grammar has just accepted end-of-sequence: the document is complete, and nothing
        # may follow it, ignore_eos or not.
        ends = grammar is not None and grammar.is_terminated
        finish: FinishReason | None = None
        stop_sequence: str | None = None
        stop = token in session.eos_ids or token in params.stop_token_ids
        if ends or (stop and not (params.ignore_eos and token in session.eos_ids)):
            text, finish = seq.assembler.finish(), FinishReason.STOP
        else:
            text = seq.assembler.push(session.output_bytes(token, params.preserved_token_ids))
            if seq.assembler.stopped:
                finish = FinishReason.STOP
                stop_sequence = seq.assembler.matched_stop
            elif seq.generated >= params.max_tokens or len(seq.tokens) + 1 >= self.context_length:
                text, finish = text + seq.assembler.finish(), FinishReason.LENGTH
        seq.tokens.append(token)
        cached = seq.cached if seq.generated == 1 else 0
        return GenerationChunk(text, [token], finish, logprobs, stop_sequence, cached_tokens=cached)

    def _end(
        self, seq: _Sequence, last: GenerationChunk | BaseException | None, *, keep: bool = True
    ) -> None:
        """Take a placed sequence out of the batch, then put its last chunk (or error); its slot keeps its
        KV for reuse unless told not to."""
        if isinstance(last, BaseException):
            keep = False  # its KV may be half-written
        self._running.remove(seq)
        assert seq.slot is not None
        self.pool.release(seq.slot, keep=keep)
        if seq.span is not None:
            seq.span.finished_step = self.counters.steps
        if seq.first_token is not None:
            self.counters.decode_time.observe(time.monotonic() - seq.first_token)
        self._on_end()
        if last is not None:
            seq.sink.put(last)

    # --- reading -----------------------------------------------------------------------------------------
    def metrics(self) -> EngineStats:
        c = self.counters
        return EngineStats(
            requests_running=len(self._running),
            requests_waiting=len(self._waiting),
            kv_cache_usage=self.pool.live_cells / self.pool.cells,
            prefix_cache_queries=c.prefix_queries,
            prefix_cache_hits=c.prefix_hits,
            preemptions=0,  # a placed request has its cells reserved: nothing is ever preempted
            step_batch_size=c.batch_size.snapshot(),
            step_tokens=c.batch_tokens.snapshot(),
            request_queue_time_s=c.queue_time.snapshot(),
            request_prefill_time_s=c.prefill_time.snapshot(),
            request_decode_time_s=c.decode_time.snapshot(),
            prompt_tokens_computed=c.prompt_computed,
        )

    def close(self) -> None:
        """Free the context, then the adapters (before the session frees the model they belong to)."""
        self.adapters.forget(self._context.handle)
        self._context.close()
        self.adapters.close()
