"""Embedding requests that arrive together share llama.cpp decodes.

Each request's inputs join a pending list; the embedding thread takes everything pending when it gets to
run and embeds it in as few decodes as the context allows (LlamaEmbedder.embed_many). While one drain
runs, the requests that arrive meanwhile gather for the next: under load they batch, alone they go at
once. A request whose client left before its drain started is skipped, not computed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

Vectors = list[list[float]]


@dataclass(slots=True)
class _Job:
    inputs: list[list[int]]
    future: Future[Vectors] = field(default_factory=Future)


class EmbeddingQueue:
    def __init__(self, embed_many: Callable[[list[list[int]]], Vectors], executor: Executor) -> None:
        self._embed_many = embed_many
        self._executor = executor
        self._lock = threading.Lock()
        self._pending: list[_Job] = []
        self.drains = 0  # drains that embedded something: fewer than requests when they batched

    def submit(self, inputs: list[list[int]]) -> Future[Vectors]:
        job = _Job(inputs)
        with self._lock:
            self._pending.append(job)
        self._executor.submit(self._drain)
        return job.future

    def _drain(self) -> None:
        with self._lock:
            jobs, self._pending = self._pending, []
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return  # an earlier drain took them
        self.drains += 1
        try:
            vectors = self._embed_many([ids for job in jobs for ids in job.inputs])
        except BaseException as exc:
            for job in jobs:
                job.future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            job.future.set_result(vectors[start : start + len(job.inputs)])
            start += len(job.inputs)
