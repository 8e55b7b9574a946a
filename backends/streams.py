"""Hand-off of generation chunks from a backend's worker thread to the request's asyncio task."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable

from backends.base import GenerationChunk


class ChunkSink:
    """The worker-side end: thread-safe puts into the consumer's loop, and a cancel flag to poll.

    The worker holds only this object, never the consumer's RequestStream, so a stream that is dropped
    without being closed is garbage-collected and cancels its work through a finalizer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def put(self, item: GenerationChunk | BaseException) -> None:
        """Called from the worker thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            self._cancelled.set()

    async def get(self) -> GenerationChunk | BaseException:
        return await self._queue.get()


class RequestStream:
    """The consumer-side end: an async iterator of chunks that aborts the request when closed early."""

    def __init__(self, sink: ChunkSink, on_abort: Callable[[], None] | None = None) -> None:
        self._sink = sink
        self._finished = False
        abort = on_abort or sink.cancel
        self._abort = abort
        self._finalizer = weakref.finalize(self, abort)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._finished:
            raise StopAsyncIteration
        try:
            item = await self._sink.get()
        except asyncio.CancelledError:
            self.abort()
            raise
        if isinstance(item, BaseException):
            self._mark_finished()
            raise item
        if item.finish_reason is not None:
            self._mark_finished()
        return item

    def _mark_finished(self) -> None:
        self._finished = True
        self._finalizer.detach()

    def abort(self) -> None:
        if not self._finished:
            self._mark_finished()
            self._abort()

    async def aclose(self) -> None:
        self.abort()
