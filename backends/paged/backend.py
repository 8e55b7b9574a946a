"""The paged engine behind the Backend protocol: one engine thread, one PagedStream per request.

The engine thread owns the LLMEngine. It sleeps on a condition while there is nothing to do; otherwise,
at the top of each step, it drains the submission and abort lists (filled under a lock by the asyncio
side), steps once, and hands each request's output to that request's asyncio queue, with one
call_soon_threadsafe per event loop per step. Detokenization stays off the engine thread: each stream
turns token bytes into text with TextAssembler (UTF-8 holdback, stop strings) as its consumer reads, and
aborts its request in the engine when a stop string ends it or when it is closed, cancelled or dropped.

Faults: an exception while admitting one request, or one the engine pins on one sequence, fails that
request only (GenerationFailedError). Anything else (a failed step, an error in this loop) leaves the
engine's state unknown: the backend turns FAILED, fails every request in flight at once with
BackendUnavailableError, refuses new ones, and its thread ends; the ModelManager then reloads the model.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from backends.base import (
    BackendCapabilities,
    BackendError,
    BackendHealth,
    BackendState,
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationFailedError,
    GenerationRequest,
    Prompt,
    QueueFullError,
    RenderOptions,
    TokenLogprob,
)
from backends.conversation import Conversation
from backends.lifecycle import Lifecycle
from backends.paged import CAPABILITIES
from backends.paged.config import EngineConfig
from backends.paged.engine import LLMEngine, RequestOutput
from backends.paged.tokenizer import Tokenizer
from backends.stats import BackendStats
from backends.text_stream import TextAssembler
from backends.tool_prompt import render_prompt

log = logging.getLogger("tandem.paged")

_Item = RequestOutput | BaseException


@dataclass(eq=False, slots=True)
class _Sink:
    """Where the engine thread puts one request's outputs. It never references the stream, so a stream
    its consumer drops is collected at once, and its finalizer aborts the request."""

    request_id: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[_Item]


class PagedStream:
    """One request's chunks (implements backends.base.GenerationStream)."""

    def __init__(self, backend: PagedBackend, request: GenerationRequest) -> None:
        self._backend = backend
        self._tokenizer = backend._tokenizer
        self.request_id = request.request_id
        self.sink = _Sink(request.request_id, asyncio.get_running_loop(), asyncio.Queue())
        self._assembler = TextAssembler(request.sampling.stop)
        self._preserved = request.sampling.preserved_token_ids  # special tokens written as their text
        self._finished = False
        # Dropped without being closed: the request is still aborted (the engine holds no reference).
        self._finalizer = weakref.finalize(self, backend._abort, request.request_id)

    def __aiter__(self) -> PagedStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._finished:
            raise StopAsyncIteration
        try:
            item = await self.sink.queue.get()
        except asyncio.CancelledError:
            self.abort()
            raise
        if isinstance(item, BaseException):
            self._mark_finished()
            raise item
        chunk = self._chunk(item)
        if chunk.finish_reason is None and self._assembler.stopped:
            self.abort()  # a stop string: only this layer can see it
            chunk.finish_reason = FinishReason.STOP
            chunk.stop_sequence = self._assembler.matched_stop
        elif chunk.finish_reason is not None:
            self._mark_finished()
        return chunk

    def abort(self) -> None:
        """Stop the request and free its blocks (at the engine's next step); idempotent."""
        if not self._finished:
            self._mark_finished()
            self._backend._abort(self.request_id)

    async def aclose(self) -> None:
        self.abort()

    def stats(self) -> BackendStats:
        return self._backend.stats()

    def _mark_finished(self) -> None:
        self._finished = True
        self._finalizer.detach()

    def _chunk(self, out: RequestOutput) -> GenerationChunk:
        tok, assembler = self._tokenizer, self._assembler
        text = []
        last = len(out.new_token_ids) - 1
        for i, token_id in enumerate(out.new_token_ids):
            # An end-of-sequence or stop token ends the output; its own text is not part of it.
            if not (out.finish_reason is FinishReason.STOP and i == last):
                text.append(assembler.push(tok.output_bytes(token_id, self._preserved)))
        if out.finish_reason is not None:
            text.append(assembler.finish())
        logprobs = None
        if out.logprobs is not None:
            logprobs = [
                TokenLogprob(
                    token_id=token_id,
                    token=tok.token_text(token_id),
                    logprob=lp.logprob,
                    top=tuple((t, tok.token_text(t), v) for t, v in lp.top),
                )
                for token_id, lp in zip(out.new_token_ids, out.logprobs, strict=True)
            ]
        return GenerationChunk(
            "".join(text),
            list(out.new_token_ids),
            out.finish_reason,
            logprobs,
            cached_tokens=out.cached_tokens,
        )


def _put_all(batch: list[tuple[_Sink, _Item]]) -> None:
    for sink, item in batch:
        sink.queue.put_nowait(item)


class PagedBackend:
    kind: ClassVar[str] = "paged"
    capabilities: ClassVar[BackendCapabilities] = CAPABILITIES

    def __init__(self, engine: LLMEngine, tokenizer: Tokenizer, model_name: str) -> None:
        self._engine = engine
        self._tokenizer = tokenizer
        self.model_name = model_name
        self.load_seconds: float | None = None
        self._cond = threading.Condition()
        self._pending_adds: dict[str, tuple[GenerationRequest, _Sink]] = {}  # guarded by _cond
        self._pending_aborts: list[str] = []  # guarded by _cond
        self._closed = False  # guarded by _cond
        self._lifecycle = Lifecycle(model_name)
        self._sinks: dict[str, _Sink] = {}  # engine thread only (and aclose, after the join)
        self._thread = threading.Thread(target=self._run, name=f"paged-engine[{model_name}]", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, path: str | Path, config: EngineConfig, model_name: str) -> PagedBackend:
        """Load a Hugging Face checkpoint directory or a GGUF file (blocking: run it in a worker thread)."""
        from backends.paged.gguf_engine import engine_from_gguf
        from backends.paged.loader import is_gguf

        started = time.perf_counter()
        path = Path(path)
        if is_gguf(path):
            engine = engine_from_gguf(path, config, model_name)
        else:
            engine = LLMEngine.from_pretrained(path, config, model_name)
        assert engine.tokenizer is not None
        # Startup objects (modules, the model, the pools) live as long as the process: keep them out of
        # the collector's full passes, which would otherwise stall steps for tens of milliseconds.
        gc.collect()
        gc.freeze()
        backend = cls(engine, engine.tokenizer, model_name)
        backend.load_seconds = time.perf_counter() - started
        log.info("loaded %s from %s in %.2fs", model_name, path, backend.load_seconds)
        return backend

    # --- Backend protocol --------------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self._engine.max_model_len

    @property
    def health(self) -> BackendHealth:
        if self._lifecycle.health.state is BackendState.READY and not self._thread.is_alive():
            self._fail(RuntimeError("the engine thread is gone"))  # cannot happen: _run catches everything
        return self._lifecycle.health

    @property
    def vocab_size(self) -> int:
        return self._engine.vocab_size

    @property
    def max_requests(self) -> int:
        return self._engine.config.max_waiting_requests  # every request waits first, even with free slots

    @property
    def engine(self) -> LLMEngine:
        """The engine core: only the engine thread steps it; reading its counters is fine."""
        return self._engine

    # --- LoRA adapters (any thread; the API is described in backends/paged/lora.py) -----------------------
    def add_adapter(self, name: str, path: Path, scale: float = 1.0) -> None:
        """Load a PEFT LoRA directory as adapter `name` (blocking: run it in a worker thread)."""
        self._engine.add_adapter(name, Path(path), scale)

    def remove_adapter(self, name: str) -> None:
        self._engine.remove_adapter(name)

    def adapters(self) -> list[str]:
        return self._engine.adapter_names()

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode_prompt(token_ids)

    def apply_chat_template(self, messages: list[ChatMessage]) -> str:
        return self._tokenizer.apply_chat_template(messages)

    def render_prompt(self, conversation: Conversation, options: RenderOptions) -> Prompt:
        def tokenize(text: str) -> list[int]:
            return self._tokenizer.encode(text, add_special_tokens=False)  # the template has its BOS text

        template = self._tokenizer.chat_template
        return render_prompt(template, conversation, options, tokenize, self.model_name)

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        raise BackendError(f"model {self.model_name!r} (backend paged) does not serve embeddings")

    def stats(self) -> BackendStats:
        metrics = self._engine.metrics()
        return BackendStats(
            running=metrics.requests_running,
            waiting=metrics.requests_waiting,
            load_seconds=self.load_seconds,
            engine=metrics,
        )

    def generate(self, request: GenerationRequest) -> PagedStream:
        """Admit the request now: a full queue or an unservable request raises here, before streaming."""
        self._engine.check_request(request)
        stream = PagedStream(self, request)
        with self._cond:
            error = self._admission_error(request)
            if error is None:
                self._pending_adds[request.request_id] = (request, stream.sink)
                self._cond.notify()
        if error is not None:
            stream._mark_finished()
            raise error
        return stream

    async def aclose(self) -> None:
        """Stop the engine thread; every request still in flight ends with finish_reason ABORT."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._lifecycle.close()
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)
        ended = [sink for _, sink in self._pending_adds.values()] + list(self._sinks.values())
        self._pending_adds.clear()
        self._sinks.clear()
        if self._lifecycle.health.state is not BackendState.FAILED:  # a failed engine is not touched
            for sink in ended:
                self._engine.abort(sink.request_id)
        self._deliver([(sink, RequestOutput(sink.request_id, [], FinishReason.ABORT)) for sink in ended])
        gc.unfreeze()  # what load() froze may now be garbage (an unloaded model): let the collector see it

    # --- any thread --------------------------------------------------------------------------------------
    def _admission_error(self, request: GenerationRequest) -> BackendError | None:
        """Called with the lock held."""
        refusal = self._lifecycle.refusal()
        if refusal is not None:
            return refusal
        if request.request_id in self._pending_adds:
            return BackendError(f"request id {request.request_id!r} is already in use")
        queued = self._engine.scheduler.num_waiting + len(self._pending_adds)
        if queued >= self._engine.config.max_waiting_requests:
            return QueueFullError(self.model_name)
        return None

    def _abort(self, request_id: str) -> None:
        with self._cond:
            if self._pending_adds.pop(request_id, None) is None and self._lifecycle.refusal() is None:
                self._pending_aborts.append(request_id)
                self._cond.notify()

    # --- engine thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the step, or this loop itself: nobody may be left waiting
            self._fail(exc)

    def _loop(self) -> None:
        engine = self._engine
        while True:
            with self._cond:
                while not (
                    self._closed or self._pending_adds or self._pending_aborts or engine.has_unfinished()
                ):
                    self._cond.wait()
                if self._closed:
                    return
                adds = list(self._pending_adds.values())
                self._pending_adds.clear()
                aborts, self._pending_aborts = self._pending_aborts, []
            for request, sink in adds:
                self._admit(request, sink)
            for request_id in aborts:
                generated = engine.abort(request_id)
                if generated is not None:
                    log.info("request %s aborted after %d tokens", request_id, generated)
                self._sinks.pop(request_id, None)
            if engine.has_unfinished():
                self._step()

    def _admit(self, request: GenerationRequest, sink: _Sink) -> None:
        """One request's admission: whatever goes wrong is that request's alone."""
        try:
            self._engine.add_request(request)
        except BackendError as exc:
            self._deliver([(sink, exc)])
        except Exception as exc:
            log.exception("request %s could not be admitted", request.request_id)
            self._deliver([(sink, GenerationFailedError(f"the request could not be admitted: {exc!r}"))])
        else:
            self._sinks[request.request_id] = sink

    def _step(self) -> None:
        batch: list[tuple[_Sink, _Item]] = []
        for out in self._engine.step():  # raises: _run fails the backend
            sink = self._sinks.get(out.request_id)
            if sink is None:
                continue
            if out.finish_reason is not None:
                del self._sinks[out.request_id]
            item: _Item = (
                out if out.error is None else GenerationFailedError(f"generation failed: {out.error}")
            )
            batch.append((sink, item))
        self._deliver(batch)

    def _fail(self, exc: BaseException) -> None:
        """The engine's state is unknown: fail every request in flight now; the thread then ends."""
        self._lifecycle.fail(f"{type(exc).__name__}: {exc}")  # before draining: see Lifecycle
        with self._cond:
            pending = [sink for _, sink in self._pending_adds.values()]
            self._pending_adds.clear()
            self._pending_aborts.clear()
        failed = pending + list(self._sinks.values())
        self._sinks.clear()
        log.error(
            "model %r: the engine failed; failing its %d requests in flight",
            self.model_name,
            len(failed),
            exc_info=exc,
        )
        refusal = self._lifecycle.refusal()
        self._deliver([(sink, refusal) for sink in failed if refusal is not None], abort=False)

    def _deliver(self, batch: list[tuple[_Sink, _Item]], abort: bool = True) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Sink, _Item]]] = defaultdict(list)
        for sink, item in batch:
            by_loop[sink.loop].append((sink, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed: nobody is listening, stop the work
                for sink, _ in items:
                    if abort:
                        self._engine.abort(sink.request_id)
                    self._sinks.pop(sink.request_id, None)
