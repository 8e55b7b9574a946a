"""Running the n streams of one API call: admission, merging, collecting, and SSE framing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request

from backends.base import BackendError, GenerationChunk, GenerationStream, TokenLogprob
from gateway.auth import Admission
from gateway.deps import CallContext
from gateway.errors import APIError, as_api_error
from gateway.generation import PreparedGeneration
from gateway.metrics import NO_TEAM, GatewayMetrics
from gateway.openai_protocol import ErrorBody, PromptTokensDetails, Usage
from gateway.registry import DEFAULT_KEEP_ALIVE, Lease, ManagedModel, ServedModel

logger = logging.getLogger("tandem.gateway")


@dataclass(slots=True)
class ChoiceResult:
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    def add(self, chunk: GenerationChunk) -> None:
        self.text += chunk.text
        self.token_ids.extend(chunk.token_ids)
        if chunk.logprobs:
            self.logprobs.extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason.value


class Generation:
    """Admits all n requests at once (so a full queue fails before any response starts) and streams them.

    Use as an async context manager: leaving it, by completion, error or cancellation, aborts whatever is
    still running in the backend.
    """

    def __init__(
        self,
        lease: Lease,
        prepared: PreparedGeneration,
        metrics: GatewayMetrics,
        admission: Admission,
        team: str,
    ) -> None:
        self._lease = lease
        self._admission = admission
        self._streams: list[GenerationStream] = []
        backend, model = lease.served.backend, lease.served.spec.name
        try:
            for request in prepared.requests:
                self._streams.append(backend.generate(request))
        except BaseException:
            self._abort()
            lease.release()
            raise
        self.prompt_tokens = prepared.prompt_tokens
        self.prompt = prepared.prompt  # chat: the rendered conversation (which tool-call format it teaches)
        self._finished = 0
        self.completion_tokens = 0
        self.cached_tokens = 0  # of the prompt, as the first choice's backend request found them
        self.started_ns = time.perf_counter_ns()
        self.first_token_ns: int | None = None
        self._tracker = metrics.track(model, backend.kind, team, prepared.prompt_tokens, len(self._streams))

    def _abort(self) -> None:
        for stream in self._streams:
            stream.abort()

    def __len__(self) -> int:
        return len(self._streams)

    async def __aenter__(self) -> Generation:
        return self

    def usage(self) -> Usage:
        """Exact token counts of what was produced so far (all of it, once the generation has ended)."""
        total = self.prompt_tokens + self.completion_tokens
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=total,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens),
        )

    @property
    def load_seconds(self) -> float:
        return self._lease.load_seconds

    async def __aexit__(self, *exc_info: object) -> None:
        self._tracker.finish(completed=self._finished == len(self._streams))
        for stream in self._streams:
            with contextlib.suppress(Exception):
                await stream.aclose()
        self._lease.release()
        await self._admission.settle(self.prompt_tokens, self.completion_tokens)

    def _observe(self, index: int, chunk: GenerationChunk) -> None:
        self._tracker.on_chunk(index, chunk)
        self.completion_tokens += len(chunk.token_ids)
        if index == 0 and chunk.cached_tokens:
            self.cached_tokens = chunk.cached_tokens
        if self.first_token_ns is None and chunk.token_ids:
            self.first_token_ns = time.perf_counter_ns()
        if chunk.finish_reason is not None:
            self._finished += 1

    async def chunks(self) -> AsyncIterator[tuple[int, GenerationChunk]]:
        """(choice index, chunk) as they arrive from any of the n streams."""
        if len(self._streams) == 1:
            async for chunk in self._streams[0]:
                self._observe(0, chunk)
                yield 0, chunk
            return
        merged: asyncio.Queue[tuple[int, GenerationChunk] | BaseException | None] = asyncio.Queue()

        async def pump(index: int, stream: AsyncIterator[GenerationChunk]) -> None:
            try:
                async for chunk in stream:
                    await merged.put((index, chunk))
                await merged.put(None)
            except Exception as exc:
                await merged.put(exc)

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self._streams)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await merged.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    self._observe(*item)
                    yield item
        finally:
            for task in tasks:
                task.cancel()

    async def collect(self, request: Request) -> list[ChoiceResult]:
        """Run to completion; if the client disconnects first, abort and stop waiting."""
        results = [ChoiceResult() for _ in self._streams]

        async def consume() -> None:
            async for index, chunk in self.chunks():
                results[index].add(chunk)

        await run_until_disconnect(request, consume())
        return results


async def open_generation(
    call: CallContext,
    model: ManagedModel,
    prepare: Callable[[ServedModel], PreparedGeneration],
    keep_alive_s: float | object | None = DEFAULT_KEEP_ALIVE,
) -> Generation:
    """Hold the model loaded, prepare the request on it (off the event loop), pass the caller's limits, and
    admit it.

    The Generation owns the hold and the admission from then on and gives both back when it ends.
    """
    lease = await call.models.acquire(model, keep_alive_s)
    admission: Admission | None = None
    try:
        prepared = await _prepare_off_loop(prepare, lease.served)
        reserved = prepared.prompt_tokens + sum(r.sampling.max_tokens for r in prepared.requests)
        admission = await call.access.admit(call.principal, model.spec.name, reserved)
        call.request.state.ratelimit_headers = admission.headers
        return Generation(lease, prepared, call.metrics, admission, call.principal.team or NO_TEAM)
    except BaseException:
        lease.release()
        if admission is not None:  # admitted by the limits, refused by the backend (e.g. its queue is full)
            await admission.settle(0, 0)
        raise


async def _prepare_off_loop(
    prepare: Callable[[ServedModel], PreparedGeneration], served: ServedModel
) -> PreparedGeneration:
    """Rendering the chat template and tokenizing take CPU time in proportion to the prompt (the template's
    bounded by its sandbox): on a worker thread, so that the loop keeps serving everyone else."""
    work = asyncio.ensure_future(asyncio.to_thread(prepare, served))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        # a thread cannot be stopped: the caller's lease must keep the model loaded until it is done with it
        with contextlib.suppress(Exception):
            await work
        raise


async def run_until_disconnect(request: Request, work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise APIError(499, "client closed the request", code="client_disconnected")
        task.result()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def _wait_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


def sse(payload: BaseModel | dict) -> str:
    body = payload.model_dump_json(exclude_none=False) if isinstance(payload, BaseModel) else _json(payload)
    return f"data: {body}\n\n"


def _json(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"))


def stream_error(exc: BaseException) -> str:
    """An error after the stream started: too late for a status code, so it goes in the stream."""
    if isinstance(exc, APIError | BackendError):
        body = as_api_error(exc).body
    else:
        logger.error("generation failed mid-stream: %s", exc)
        body = ErrorBody(message=str(exc) or "generation failed", type="server_error")
    return sse({"error": body.model_dump()})


SSE_DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
