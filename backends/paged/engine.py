"""The synchronous engine core: add requests, step (schedule -> run -> postprocess), read outputs."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from math import inf
from pathlib import Path

from backends import structured
from backends.base import BackendError, FinishReason, GenerationRequest, QueueFullError, StructuredOutput
from backends.paged.block_manager import BlockManager
from backends.paged.config import EngineConfig
from backends.paged.loader import load_checkpoint, random_model
from backends.paged.lora import AdapterRegistry, LoraDisabledError, load_peft_adapter
from backends.paged.model import CausalLM
from backends.paged.model_config import ModelConfig
from backends.paged.model_runner import ModelRunner, resolve_device, resolve_dtype
from backends.paged.sampler import SamplerOutput
from backends.paged.scheduler import Scheduler, SchedulerOutput
from backends.paged.sequence import Sequence
from backends.paged.tokenizer import Tokenizer
from backends.stats import COUNT_BUCKETS, LATENCY_BUCKETS_S, EngineStats, Histogram
from backends.structured import GrammarMatcher, StructuredCompiler, Vocabulary

log = logging.getLogger("tandem.paged")

# A generator takes 64 bits. Any int maps onto them (as torch.manual_seed maps negatives): OpenAI and vLLM
# accept any int64 seed, and choice i of n samples with seed + i, which may pass 2^63.
_SEED_BITS = 2**64


class RequestRejectedError(BackendError, ValueError):
    """The request cannot be served as given (too long, empty, unknown token ids, duplicate id)."""


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), best first


@dataclass(slots=True)
class RequestOutput:
    """What one request produced in one step. finish_reason STOP means the last token is a stop token.

    `error`: the request failed in this step (finish_reason ABORT, its blocks freed); the engine serves on.
    """

    request_id: str
    new_token_ids: list[int]
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprobs] | None = None
    error: str | None = None
    cached_tokens: int = 0  # on the first output: the prompt tokens the prefix cache held


@dataclass(slots=True)
class StepTiming:
    """Wall-clock seconds of one step's phases. `execute` includes the device sync of the sampled ids."""

    schedule: float = 0.0
    prepare: float = 0.0
    execute: float = 0.0
    postprocess: float = 0.0
    num_seqs: int = 0
    num_tokens: int = 0


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """Everything the engine counts (tests, benchmarks); `metrics()` is the gateway's subset."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of KV blocks held by running sequences
    num_kv_blocks: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of those, tokens found cached
    num_preemptions: int
    num_computed_tokens: int  # tokens run through the model
    num_prompt_tokens_computed: int  # of those, at prompt positions (cache hits skip these)
    num_generation_tokens: int  # tokens sampled
    num_steps: int
    num_lora_loads: int = 0  # adapters copied into a LoRA slot (first use, or swapped back in)


@dataclass(slots=True)
class _Counters:
    computed: int = 0
    prompt_computed: int = 0
    generated: int = 0
    steps: int = 0
    step_batch_size: Histogram = field(default_factory=lambda: Histogram(COUNT_BUCKETS))
    step_tokens: Histogram = field(default_factory=lambda: Histogram(COUNT_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    prefill_time: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    decode_time: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))


class LLMEngine:
    def __init__(
        self,
        model: CausalLM,
        config: EngineConfig,
        eos_ids: tuple[int, ...] = (),
        tokenizer: Tokenizer | None = None,
        model_name: str = "model",
    ) -> None:
        self.config = config
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids or model.config.eos_token_ids
        self.vocab_size = model.config.vocab_size
        limit = model.config.max_model_len
        if config.max_model_len is not None and config.max_model_len > limit:
            raise ValueError(
                f"max_model_len {config.max_model_len} exceeds what the model supports ({limit})"
            )
        self.runner = ModelRunner(model, config, self.eos_ids)
        self.adapters = AdapterRegistry()
        self.block_manager = BlockManager(
            self.runner.num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(config, self.block_manager)
        # A sequence never outgrows the whole pool, so it can always finish once it runs alone.
        self.max_model_len = min(config.max_model_len or limit, self.runner.num_blocks * config.block_size)
        self._requests: dict[str, Sequence] = {}
        self._arrivals = itertools.count()
        self._grammars: StructuredCompiler | None = None  # built on the first structured request
        self._counters = _Counters()
        self.last_step = StepTiming()

    @classmethod
    def from_pretrained(cls, path: str | Path, config: EngineConfig, model_name: str = "model") -> LLMEngine:
        path = Path(path)
        device = resolve_device(config.device)
        model = load_checkpoint(path, resolve_dtype(config.dtype, device), device)
        tokenizer = Tokenizer.from_dir(path, model.config.vocab_size, model.config.eos_token_ids)
        return cls(model, config, tokenizer.eos_ids, tokenizer, model_name)

    @classmethod
    def from_random(cls, preset: str | ModelConfig, config: EngineConfig, seed: int = 0) -> LLMEngine:
        device = resolve_device(config.device)
        model = random_model(preset, resolve_dtype(config.dtype, device), device, seed)
        return cls(model, config, model_name=preset if isinstance(preset, str) else "random")

    # --- LoRA adapters (any thread) -----------------------------------------------------------------------
    def add_adapter(self, name: str, path: Path, scale: float = 1.0) -> None:
        """Load a PEFT LoRA directory and serve it as `name` (blocking; see backends/paged/lora.py)."""
        if self.config.max_loras == 0:
            raise LoraDisabledError(
                f"model {self.model_name!r} serves no LoRA adapters: its engine has max_loras 0"
            )
        model = self.runner.model  # read-only here: shapes and dtype
        adapter = load_peft_adapter(
            path, name, self.adapters.new_uid(), model, self.config.max_lora_rank, scale
        )
        self.adapters.add(adapter)
        log.info("adapter %r (rank %d) loaded from %s", name, adapter.rank, adapter.path)

    def remove_adapter(self, name: str) -> None:
        """Stop serving `name`; its running requests finish on it (they hold the loaded adapter)."""
        self.adapters.remove(name)

    def adapter_names(self) -> list[str]:
        return self.adapters.names()

    # --- requests ----------------------------------------------------------------------------------------
    def check_request(self, request: GenerationRequest) -> None:
        """Refuse what can never be served; reads only immutable state, so any thread may call it."""
        prompt = request.prompt_token_ids
        if not prompt:
            raise RequestRejectedError("the prompt is empty")
        if len(prompt) >= self.max_model_len:
            raise RequestRejectedError(
                f"the prompt has {len(prompt)} tokens; this model's context is {self.max_model_len}"
            )
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise RequestRejectedError(f"prompt token ids must lie in [0, {self.vocab_size})")
        if request.sampling.max_tokens < 1:
            raise RequestRejectedError("max_tokens must be at least 1")
        if request.adapter is not None and self.adapters.get(request.adapter) is None:
            raise RequestRejectedError(f"model {self.model_name!r} has no adapter named {request.adapter!r}")
        if request.sampling.structured is not None:
            if self.tokenizer is None:
                raise RequestRejectedError("structured output needs the model's tokenizer")
            structured.validate(request.sampling.structured)

    def add_request(self, request: GenerationRequest) -> None:
        """Queue a request; raises RequestRejectedError or QueueFullError (the waiting queue is bounded)."""
        self.check_request(request)
        if request.request_id in self._requests:
            raise RequestRejectedError(f"request id {request.request_id!r} is already in use")
        if self.scheduler.is_full:
            raise QueueFullError(self.model_name)
        seed = request.sampling.seed
        adapter = None if request.adapter is None else self.adapters.get(request.adapter)
        if request.adapter is not None and adapter is None:  # removed since check_request
            raise RequestRejectedError(f"model {self.model_name!r} has no adapter named {request.adapter!r}")
        # Everything that may fail for this request's own reasons happens before it is registered, so a
        # failed admission leaves no trace in the engine.
        seq = Sequence(
            request.request_id,
            list(request.prompt_token_ids),
            request.sampling,
            arrival=next(self._arrivals),
            generator=None if seed is None else self.runner.make_generator(seed % _SEED_BITS),
            grammar=self._matcher(request.sampling.structured) if request.sampling.structured else None,
            adapter=adapter,
            arrival_time=time.monotonic(),
        )
        self._requests[seq.request_id] = seq
        self.scheduler.add(seq)

    def _matcher(self, spec: StructuredOutput) -> GrammarMatcher:
        """Compiles on this (the engine) thread: a new schema stalls one step (ms on small vocabularies,
        ~0.1-0.5 s on 150k ones); a schema seen before is cached."""
        if self._grammars is None:
            assert self.tokenizer is not None  # check_request refuses structured output without one
            token_bytes = [self.tokenizer.token_bytes(t) for t in range(self.vocab_size)]
            vocab = Vocabulary(token_bytes, self.eos_ids, self.tokenizer.special_bytes)
            self._grammars = StructuredCompiler(vocab)
        return self._grammars.matcher(spec)

    def abort(self, request_id: str) -> int | None:
        """Drop a request and free its blocks at once. Returns how many tokens it had generated, or None
        when it is unknown or already finished."""
        seq = self._requests.pop(request_id, None)
        if seq is None:
            return None
        self.scheduler.finish(seq, FinishReason.ABORT)
        return seq.num_output_tokens

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    # --- the step ----------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        plan = self.scheduler.schedule()
        t1 = time.perf_counter()
        if plan.is_empty:
            self.last_step = StepTiming(schedule=t1 - t0)
            return []
        self._observe_scheduled(plan)
        inputs = self.runner.prepare(plan)
        t2 = time.perf_counter()
        sampled = self.runner.execute(inputs)
        token_ids = sampled.token_ids.tolist() if sampled is not None else []
        t3 = time.perf_counter()
        outputs = self._postprocess(plan, inputs.sampling_seqs, token_ids, sampled)
        t4 = time.perf_counter()
        self.last_step = StepTiming(
            t1 - t0, t2 - t1, t3 - t2, t4 - t3, len(plan.scheduled), plan.num_batched_tokens
        )
        return outputs

    def _observe_scheduled(self, plan: SchedulerOutput) -> None:
        counters = self._counters
        counters.step_batch_size.observe(len(plan.scheduled))
        counters.step_tokens.observe(plan.num_batched_tokens)
        now = time.monotonic()
        for item in plan.scheduled:
            if item.seq.first_scheduled_time is None:
                item.seq.first_scheduled_time = now
                counters.queue_time.observe(now - item.seq.arrival_time)

    def _observe_token(self, seq: Sequence, finished: bool, now: float) -> None:
        if seq.first_token_time is None:
            seq.first_token_time = now
            self._counters.prefill_time.observe(now - (seq.first_scheduled_time or seq.arrival_time))
        if finished:
            self._counters.decode_time.observe(now - seq.first_token_time)

    def _postprocess(
        self, plan: SchedulerOutput, seqs: list[Sequence], token_ids: list[int], sampled: SamplerOutput | None
    ) -> list[RequestOutput]:
        counters = self._counters
        counters.steps += 1
        counters.computed += plan.num_batched_tokens
        for item in plan.scheduled:
            start = item.seq.num_computed_tokens
            counters.prompt_computed += max(
                0, min(start + item.num_new_tokens, item.seq.num_prompt_tokens) - start
            )
        self.scheduler.commit(plan)
        counters.generated += len(token_ids)
        logprobs = self._logprobs(seqs, sampled)
        now = time.monotonic()
        outputs: list[RequestOutput] = []
        for row, (seq, token_id) in enumerate(zip(seqs, token_ids, strict=True)):
            seq.append_token(token_id)
            try:
                reason = self._finish_reason(seq, token_id)
                if seq.grammar is not None:
                    reason = self._grammar_finish(seq, token_id) or reason
            except Exception as exc:  # this sequence's own state (its grammar): fail it, not the batch
                log.exception("request %s failed after token %d", seq.request_id, token_id)
                self._fail_request(seq)
                outputs.append(RequestOutput(seq.request_id, [], FinishReason.ABORT, error=repr(exc)))
                continue
            self._observe_token(seq, reason is not None, now)
            if reason is not None:
                self.scheduler.finish(seq, reason)
                del self._requests[seq.request_id]
            cached = seq.num_cached_tokens if seq.num_output_tokens == 1 else 0
            output = RequestOutput(seq.request_id, [token_id], reason, logprobs[row], cached_tokens=cached)
            outputs.append(output)
        return outputs

    def _fail_request(self, seq: Sequence) -> None:
        self.scheduler.finish(seq, FinishReason.ABORT)
        self._requests.pop(seq.request_id, None)

    @staticmethod
    def _logprobs(seqs: list[Sequence], sampled: SamplerOutput | None) -> list[list[TokenLogprobs] | None]:
        if sampled is None or sampled.logprobs is None:
            return [None] * len(seqs)
        chosen = sampled.logprobs.tolist()
        top_ids = sampled.top_ids.tolist() if sampled.top_ids is not None else None
        top_lps = sampled.top_logprobs.tolist() if sampled.top_logprobs is not None else None
        result: list[list[TokenLogprobs] | None] = []
        for row, seq in enumerate(seqs):
            k = seq.params.logprobs
            if k is None:
                result.append(None)
                continue
            top: tuple[tuple[int, float], ...] = ()
            if top_ids and top_lps:  # masked tokens (-inf: a grammar, min_tokens) are no candidates
                top = tuple(
                    (t, lp) for t, lp in zip(top_ids[row][:k], top_lps[row][:k], strict=True) if lp > -inf
                )
            result.append([TokenLogprobs(chosen[row], top)])
        return result

    @staticmethod
    def _grammar_finish(seq: Sequence, token_id: int) -> FinishReason | None:
        """Advance the grammar. Once it accepts end-of-sequence the document is complete and nothing may
        follow, ignore_eos or min_tokens notwithstanding."""
        assert seq.grammar is not None
        if not seq.grammar.accept(token_id):  # cannot happen: the token was sampled under the mask
            log.error("request %s: token %d breaks its grammar; ending it", seq.request_id, token_id)
            return FinishReason.ABORT
        return FinishReason.STOP if seq.grammar.is_terminated else None

    def _finish_reason(self, seq: Sequence, token_id: int) -> FinishReason | None:
        params = seq.params
        if seq.num_output_tokens >= params.min_tokens and (
            (token_id in self.eos_ids and not params.ignore_eos) or token_id in params.stop_token_ids
        ):
            return FinishReason.STOP
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    # --- numbers -----------------------------------------------------------------------------------------
    @property
    def stats(self) -> EngineCounters:
        c = self._counters
        return EngineCounters(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            kv_cache_usage=self.block_manager.usage,
            num_kv_blocks=self.block_manager.num_blocks,
            prefix_cache_queries=self.block_manager.num_query_tokens,
            prefix_cache_hits=self.block_manager.num_hit_tokens,
            num_preemptions=self.scheduler.num_preemptions,
            num_computed_tokens=c.computed,
            num_prompt_tokens_computed=c.prompt_computed,
            num_generation_tokens=c.generated,
            num_steps=c.steps,
            num_lora_loads=self.runner.lora.num_loads if self.runner.lora is not None else 0,
        )

    def metrics(self) -> EngineStats:
        """The gateway's /metrics view (vLLM's meanings); cheap, and safe to call from another thread."""
        c = self._counters
        return EngineStats(
            requests_running=self.scheduler.num_running,
            requests_waiting=self.scheduler.num_waiting,
            kv_cache_usage=self.block_manager.usage,
            prefix_cache_queries=self.block_manager.num_query_tokens,
            prefix_cache_hits=self.block_manager.num_hit_tokens,
            preemptions=self.scheduler.num_preemptions,
            step_batch_size=c.step_batch_size.snapshot(),
            step_tokens=c.step_tokens.snapshot(),
            request_queue_time_s=c.queue_time.snapshot(),
            request_prefill_time_s=c.prefill_time.snapshot(),
            request_decode_time_s=c.decode_time.snapshot(),
        )

    def check_invariants(self) -> None:
        """Block accounting (tests): only running sequences hold blocks, and ref counts match."""
        holders = [s for s in self._requests.values() if s.block_table]
        self.block_manager.check_invariants(holders)

    def generate(self, requests: list[GenerationRequest]) -> dict[str, list[int]]:
        """Run requests to completion (offline use, tests): output token ids by request id."""
        for request in requests:
            self.add_request(request)
        outputs: dict[str, list[int]] = {r.request_id: [] for r in requests}
        while self.has_unfinished():
            for out in self.step():
                outputs[out.request_id] += out.new_token_ids
        return outputs
