"""The dev backend: one GGUF model in-process on llama.cpp, one request at a time on a worker thread.

Requests wait in a bounded FIFO and never share or interrupt each other's context (llama-cpp-python's
own server cancels a running request when a new one arrives; we do not). The event loop never runs
llama.cpp: tokens cross from the worker thread through a ChunkSink.

Faults: an exception while running one request fails that request (GenerationFailedError) and the worker
serves the next. One that escapes the worker's loop (or a worker thread found dead) marks the backend
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from backends.base import (
    BackendCapabilities,
    BackendHealth,
    BackendState,
    GenerationFailedError,
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
from backends.llamacpp.session import LlamaSession
from backends.stats import BackendStats
from backends.streams import ChunkSink, RequestStream
from backends.structured import validate as validate_structured
from backends.tool_prompt import render_prompt

logger = logging.getLogger("tandem.llamacpp")


@dataclass(slots=True)
class _Job:
    request: GenerationRequest
    sink: ChunkSink


class LlamaCppBackend:
    kind: ClassVar[str] = "llamacpp"
    capabilities: ClassVar[BackendCapabilities] = CAPABILITIES

    def __init__(
        self, session: LlamaSession, model_name: str, max_queued: int, retry_after_s: int = 1
    ) -> None:
        self._session = session
        self._model_name = model_name
        self._max_admitted = max_queued + 1  # the running request plus those waiting
        self._retry_after_s = retry_after_s
        self._admitted = 0
        self._running = False
        self.load_seconds: float | None = None
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # put under _lock
        self._current: _Job | None = None  # the job the worker runs (worker thread only)
        self._lifecycle = Lifecycle(model_name)
        source = session.chat_template_source
        self._template = ChatTemplate(source, session.bos_text, session.eos_text) if source else None
        self._worker = threading.Thread(target=self._work, name=f"llamacpp-{model_name}", daemon=True)
        self._worker.start()
        # embeddings use a context of their own, on a thread of their own, created on first use
        self._embedder: LlamaEmbedder | None = None
        self._embedding_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{model_name}")

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
    ) -> LlamaCppBackend:
        started = time.perf_counter()
        session = LlamaSession.open(
            path, context_length=context_length, threads=threads or os.cpu_count() or 1
        )
        backend = cls(session, model_name, max_queued, retry_after_s)
        backend.load_seconds = time.perf_counter() - started
        logger.info("loaded %s from %s in %.2fs", model_name, path, backend.load_seconds)
        return backend

    @property
    def context_length(self) -> int:
        return self._session.context_length

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
        return await asyncio.get_running_loop().run_in_executor(self._embedding_thread, self._embed, inputs)

    def _embed(self, inputs: list[list[int]]) -> list[list[float]]:
        if self._embedder is None:
            session = self._session
            self._embedder = LlamaEmbedder(session.path, session.context_length, session.threads)
        return [self._embedder.embed(tokens).tolist() for tokens in inputs]

    def stats(self) -> BackendStats:
        running = int(self._running)
        return BackendStats(
            running=running, waiting=max(self._admitted - running, 0), load_seconds=self.load_seconds
        )

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._session.tokenize(text, add_special_tokens=add_special_tokens)

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
            self._jobs.put(_Job(request, sink))
        return RequestStream(sink)

    def _work(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                self._current = job
                self._run(job)
                self._current = None
        except BaseException as exc:  # outside any one request's blame: the backend has failed
            self._fail(exc)

    def _run(self, job: _Job) -> None:
        try:
            self._running = True
            generated = 0 if job.sink.cancelled else self._session.run(job.request, job.sink)
            if job.sink.cancelled:
                logger.info("request %s aborted after %d tokens", job.request.request_id, generated)
        except Exception as exc:  # the request fails, the worker and the model live on
            logger.exception("generation failed for %s", job.request.request_id)
            job.sink.put(GenerationFailedError(f"generation failed: {exc!r}"))
        finally:
            with self._lock:
                self._running = False
                self._admitted -= 1

    def _fail(self, exc: BaseException) -> None:
        if not self._lifecycle.fail(f"{type(exc).__name__}: {exc}"):
            return
        with self._lock:
            failed = [self._current] if self._current is not None else []
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    failed.append(job)
            self._admitted = 0
            self._running = False
        logger.error(
            "model %r: the worker failed; failing its %d requests",
            self._model_name,
            len(failed),
            exc_info=exc,
        )
        refusal = self._lifecycle.refusal()
        assert refusal is not None
        for job in failed:
            job.sink.put(refusal)

    async def aclose(self) -> None:
        with self._lock:
            self._lifecycle.close()
            self._jobs.put(None)
        await asyncio.to_thread(self._worker.join)
        await asyncio.to_thread(self._embedding_thread.shutdown)
        if self._embedder is not None:
            self._embedder.close()
        self._session.close()
