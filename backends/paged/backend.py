"""The paged engine behind the Backend protocol: one engine thread, one PagedStream per request.

The engine thread owns the LLMEngine. It sleeps on a condition while there is nothing to do; otherwise,
at the top of each step, it drains the submission and abort lists (filled under a lock by the asyncio
side), steps once, and hands each request's output to that request's asyncio queue, with one
call_soon_threadsafe per event loop per step. Detokenization stays off the engine thread: each stream
turns token bytes into text with TextAssembler (UTF-8 holdback, stop strings) as its consumer reads, and
aborts its request in the engine when a stop string ends it or when it is closed, cancelled or dropped.
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
    BackendError,
    BackendUnavailableError,
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    QueueFullError,
    TokenLogprob,
)
from backends.paged.config import EngineConfig
from backends.paged.engine import LLMEngine, RequestOutput
from backends.paged.tokenizer import Tokenizer
from backends.stats import BackendStats
from backends.text_stream import TextAssembler

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
                text.append(assembler.push(tok.token_bytes(token_id)))
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
        return GenerationChunk("".join(text), list(out.new_token_ids), out.finish_reason, logprobs)


def _put_all(batch: list[tuple[_Sink, _Item]]) -> None:
    for sink, item in batch:
        sink.queue.put_nowait(item)


class PagedBackend:
    kind: ClassVar[str] = "paged"
    unsupported_features: ClassVar[frozenset[str]] = frozenset()
    supports_embeddings: ClassVar[bool] = False

    def __init__(self, engine: LLMEngine, tokenizer: Tokenizer, model_name: str) -> None:
        self._engine = engine
        self._tokenizer = tokenizer
        self.model_name = model_name
        self.load_seconds: float | None = None
        self._cond = threading.Condition()
        self._pending_adds: dict[str, tuple[GenerationRequest, _Sink]] = {}  # guarded by _cond
        self._pending_aborts: list[str] = []  # guarded by _cond
        self._closed = False  # guarded by _cond
        self._sinks: dict[str, _Sink] = {}  # engine thread only (and aclose, after the join)
        self._thread = threading.Thread(target=self._run, name=f"paged-engine[{model_name}]", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, path: str | Path, config: EngineConfig, model_name: str) -> PagedBackend:
        """Load a Hugging Face checkpoint directory (blocking: call it from a worker thread)."""
        started = time.perf_counter()
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
    def vocab_size(self) -> int:
        return self._engine.vocab_size

    @property
    def engine(self) -> LLMEngine:
        """The engine core: only the engine thread steps it; reading its counters is fine."""
        return self._engine

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def apply_chat_template(self, messages: list[ChatMessage]) -> str:
        return self._tokenizer.apply_chat_template(messages)

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
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)
        ended = [sink for _, sink in self._pending_adds.values()] + list(self._sinks.values())
        self._pending_adds.clear()
        self._sinks.clear()
        for sink in ended:
            self._engine.abort(sink.request_id)
        self._deliver([(sink, RequestOutput(sink.request_id, [], FinishReason.ABORT)) for sink in ended])
        gc.unfreeze()  # what load() froze may now be garbage (an unloaded model): let the collector see it

    # --- any thread --------------------------------------------------------------------------------------
    def _admission_error(self, request: GenerationRequest) -> BackendError | None:
        """Called with the lock held."""
        if self._closed:
            return BackendUnavailableError(f"model {self.model_name!r} is shutting down")
        if request.request_id in self._pending_adds:
            return BackendError(f"request id {request.request_id!r} is already in use")
        queued = self._engine.scheduler.num_waiting + len(self._pending_adds)
        if queued >= self._engine.config.max_waiting_requests:
            return QueueFullError(self.model_name)
        return None

    def _abort(self, request_id: str) -> None:
        with self._cond:
            if self._pending_adds.pop(request_id, None) is None and not self._closed:
                self._pending_aborts.append(request_id)
                self._cond.notify()

    # --- engine thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
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
                try:
                    engine.add_request(request)
                    self._sinks[request.request_id] = sink
                except BackendError as exc:
                    self._deliver([(sink, exc)])
            for request_id in aborts:
                generated = engine.abort(request_id)
                if generated is not None:
                    log.info("request %s aborted after %d tokens", request_id, generated)
                self._sinks.pop(request_id, None)
            if engine.has_unfinished():
                self._step()

    def _step(self) -> None:
        try:
            outputs = self._engine.step()
        except Exception as exc:  # a failed step must not leave every client waiting forever
            log.exception("engine step failed; aborting all requests")
            failed = list(self._sinks.values())
            self._sinks.clear()
            for sink in failed:
                self._engine.abort(sink.request_id)
            error = BackendUnavailableError(f"the engine failed: {exc}")
            self._deliver([(sink, error) for sink in failed])
            return
        batch: list[tuple[_Sink, _Item]] = []
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if sink is not None:
                if out.finish_reason is not None:
                    del self._sinks[out.request_id]
                batch.append((sink, out))
        self._deliver(batch)

    def _deliver(self, batch: list[tuple[_Sink, _Item]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Sink, _Item]]] = defaultdict(list)
        for sink, item in batch:
            by_loop[sink.loop].append((sink, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed: nobody is listening, stop the work
                for sink, _ in items:
                    self._engine.abort(sink.request_id)
                    self._sinks.pop(sink.request_id, None)
