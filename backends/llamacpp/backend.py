"""The dev backend: one GGUF model in-process on llama.cpp, up to `parallel` requests decoded together.

A thin thread wrapper around the synchronous BatchEngine (backends.llamacpp.engine): requests wait in a
bounded FIFO; the worker thread moves them into the engine between steps (continuous batching) and steps
it while it has work. Requests never interrupt each other (llama-cpp-python's own server cancels a running
request when a new one arrives; we do not). The event loop never runs llama.cpp: tokens cross from the
worker thread through a ChunkSink.

LoRA adapters are added and removed on the worker thread too, between two steps (a control job in the same
queue; the caller blocks on its Future): llama.cpp's model is not safe to change under a decode.

Faults: an exception while sampling one request fails that request (GenerationFailedError) and the engine
serves the others. One that escapes the engine's step (or a worker thread found dead) marks the backend
FAILED: every admitted request fails at once with BackendUnavailableError, new ones are refused, and the
ModelManager reloads the model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from backends.base import (
    BackendCapabilities,
    BackendHealth,
    BackendState,
    GenerationRequest,
    Prompt,
    QueueFullError,
    RenderOptions,
)
from backends.chat_template import ChatTemplate
from backends.conversation import Conversation
from backends.lifecycle import Lifecycle
from backends.llamacpp import CAPABILITIES
from backends.llamacpp.embedder import LlamaEmbedder
from backends.llamacpp.embedding_queue import EmbeddingQueue
from backends.llamacpp.engine import BatchEngine
from backends.llamacpp.session import LlamaSession
from backends.stats import BackendStats
from backends.streams import ChunkSink, RequestStream
from backends.structured import validate as validate_structured
from backends.tool_prompt import render_prompt

logger = logging.getLogger("tandem.llamacpp")

DEFAULT_PARALLEL = 4  # sequences decoded together, as Ollama's OLLAMA_NUM_PARALLEL default


@dataclass(slots=True)
class _Job:
    request: GenerationRequest
    sink: ChunkSink
    arrival: float  # time.monotonic() at admission


@dataclass(slots=True)
class _Control:
    """Work on the engine itself (adding or removing an adapter), run by the worker between steps."""

    action: Callable[[BatchEngine], None]
    done: Future[None] = field(default_factory=Future)


class LlamaCppBackend:
    kind: ClassVar[str] = "llamacpp"
    capabilities: ClassVar[BackendCapabilities] = CAPABILITIES

    def __init__(
        self,
        session: LlamaSession,
        model_name: str,
        max_queued: int,
        retry_after_s: int = 1,
        *,
        parallel: int = DEFAULT_PARALLEL,
        kv_cells: int | None = None,
        kv_unified: bool = False,
    ) -> None:
        """kv_cells: the KV cells of all sequences, default room for `parallel` full contexts; each
        sequence has kv_cells/parallel of its own, or (kv_unified) they share one pool."""
        self._session = session
        self._model_name = model_name
        cells = kv_cells or session.context_length * parallel
        self._engine = BatchEngine(
            session,
            parallel=parallel,
            context_length=session.context_length,
            cells=cells,
            kv_unified=kv_unified,
            on_end=self._ended,
            model_name=model_name,
        )
        self._max_admitted = max_queued + parallel  # the running requests plus those waiting
        self._retry_after_s = retry_after_s
        self._admitted = 0
        self.load_seconds: float | None = None
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | _Control | None] = queue.SimpleQueue()  # put under _lock
        self._lifecycle = Lifecycle(model_name)
        source = session.chat_template_source
        self._template = ChatTemplate(source, session.bos_text, session.eos_text) if source else None
        self._worker = threading.Thread(target=self._work, name=f"llamacpp-{model_name}", daemon=True)
        self._worker.start()
        # embeddings use a context of their own, on a thread of their own, created on first use
        self._embedder: LlamaEmbedder | None = None
        self._embedding_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{model_name}")
        self.embeddings = EmbeddingQueue(self._embed_many, self._embedding_thread)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        model_name: str,
        context_length: int | None,
        max_queued: int,
        threads: int | None = None,
        retry_after_s: int = 1,
        parallel: int = DEFAULT_PARALLEL,
        kv_cells: int | None = None,
        kv_unified: bool = False,
    ) -> LlamaCppBackend:
        started = time.perf_counter()
        session = LlamaSession.open(
            path, context_length=context_length, threads=threads or os.cpu_count() or 1
        )
        try:
            backend = cls(
                session,
                model_name,
                max_queued,
                retry_after_s,
                parallel=parallel,
                kv_cells=kv_cells,
                kv_unified=kv_unified,
            )
        except BaseException:
            session.close()
            raise
        backend.load_seconds = time.perf_counter() - started
        logger.info("loaded %s from %s in %.2fs", model_name, path, backend.load_seconds)
        return backend

    @property
    def context_length(self) -> int:
        return self._engine.context_length

    @property
    def engine(self) -> BatchEngine:
        """The engine core, for tests and benchmarks (its counters and step spans); worker thread owns it."""
        return self._engine

    @property
    def vocab_size(self) -> int:
        return self._session.vocab_size

    @property
    def max_requests(self) -> int:
        return self._max_admitted

    @property
    def health(self) -> BackendHealth:
        if self._lifecycle.health.state is BackendState.READY and not self._worker.is_alive():
            self._fail(RuntimeError("the worker thread is gone"))
        return self._lifecycle.health

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        refusal = self._lifecycle.refusal()
        if refusal is not None:
            raise refusal
        return await asyncio.wrap_future(self.embeddings.submit(inputs))

    def _embed_many(self, inputs: list[list[int]]) -> list[list[float]]:
        """On the embedding thread: the inputs of every request that arrived together."""
        if self._embedder is None:
            session = self._session
            self._embedder = LlamaEmbedder(session.path, session.context_length, session.threads)
        return [vector.tolist() for vector in self._embedder.embed_many(inputs)]

    def stats(self) -> BackendStats:
        engine = self._engine.metrics()
        running = engine.requests_running
        return BackendStats(
            running=running,
            waiting=max(self._admitted - running, 0),
            load_seconds=self.load_seconds,
            engine=engine,
        )

    # --- LoRA adapters (backends.lora_host.AdapterHost) --------------------------------------------------
    def add_adapter(self, name: str, path: Path, scale: float = 1.0) -> None:
        """Load a GGUF LoRA file as adapter `name` (blocking: call it in a worker thread); raises
        AdapterLoadError when it cannot run on this model."""
        self._control(lambda engine: engine.add_adapter(name, Path(path), scale))

    def remove_adapter(self, name: str) -> None:
        """Stop serving `name`; a request still running on it fails (the gateway refuses the removal while
        the adapter model has requests in flight)."""
        self._control(lambda engine: engine.remove_adapter(name))

    def adapters(self) -> list[str]:
        return list(self._engine.adapter_names)

    def _control(self, action: Callable[[BatchEngine], None]) -> None:
        job = _Control(action)
        with self._lock:  # as generate: a failed or closed backend takes none
            refusal = self._lifecycle.refusal()
            if refusal is not None:
                raise refusal
            self._jobs.put(job)
        job.done.result()

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._session.tokenize(text, add_special_tokens=add_special_tokens)

    def detokenize(self, token_ids: list[int]) -> str:
        return self._session.detokenize(token_ids)

    def render_prompt(self, conversation: Conversation, options: RenderOptions) -> Prompt:
        def tokenize(text: str) -> list[int]:
            return self._session.tokenize(text, add_special_tokens=False)  # the template has its BOS text

        return render_prompt(self._template, conversation, options, tokenize, self._model_name)

    def generate(self, request: GenerationRequest) -> RequestStream:
        if request.sampling.structured is not None:
            validate_structured(request.sampling.structured)  # an invalid schema is refused at admission
        sink = ChunkSink(asyncio.get_running_loop())
        with self._lock:  # checked and queued under the lock _fail drains under: none slips past it
            refusal = self._lifecycle.refusal()
            if refusal is not None:
                raise refusal
            if self._admitted >= self._max_admitted:
                raise QueueFullError(self._model_name, self._retry_after_s)
            self._admitted += 1
            self._jobs.put(_Job(request, sink, time.monotonic()))
        return RequestStream(sink)

    def _work(self) -> None:
        engine, stopping = self._engine, False
        try:
            while not stopping or engine.has_work:
                # idle: sleep until a request comes; busy: take what came, between two steps
                jobs = [] if engine.has_work or stopping else [self._jobs.get()]
                while True:
                    try:
                        jobs.append(self._jobs.get_nowait())
                    except queue.Empty:
                        break
                for job in jobs:
                    if job is None:  # closing: finish what was admitted, then stop
                        stopping = True
                    elif isinstance(job, _Control):
                        self._run_control(job)
                    elif not engine.add(job.request, job.sink, job.arrival):
                        self._ended()
                engine.step()
        except BaseException as exc:  # outside any one request's blame: the backend has failed
            self._fail(exc)

    def _run_control(self, job: _Control) -> None:
        try:
            job.action(self._engine)
        except BaseException as exc:  # the caller's to answer (a bad adapter file): the engine goes on
            job.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            job.done.set_result(None)

    def _ended(self) -> None:
        """A request left the engine (worker thread)."""
        with self._lock:
            self._admitted -= 1

    def _fail(self, exc: BaseException) -> None:
        if not self._lifecycle.fail(f"{type(exc).__name__}: {exc}"):
            return
        refusal = self._lifecycle.refusal()
        assert refusal is not None
        with self._lock:
            failed = self._engine.sinks()
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(job, _Control):
                    job.done.set_exception(refusal)
                elif job is not None:
                    failed.append(job.sink)
            self._admitted = 0
        logger.error(
            "model %r: the worker failed; failing its %d requests",
            self._model_name,
            len(failed),
            exc_info=exc,
        )
        for sink in failed:
            sink.put(refusal)

    async def aclose(self) -> None:
        with self._lock:
            self._lifecycle.close()
            self._jobs.put(None)
        await asyncio.to_thread(self._worker.join)
        await asyncio.to_thread(self._embedding_thread.shutdown)
        if self._embedder is not None:
            self._embedder.close()
        self._engine.close()
        self._session.close()
