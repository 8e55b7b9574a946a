"""The active profile's models and their lifecycle.

Models load on first use (concurrent requests wait for the one load; begin_load starts one before any
request, as `tandem serve` does for preloads while it imports the app), stay loaded for keep_alive after
their last request (0: unload now; forever: never), at most `max_loaded_models` at once with the least
recently used idle model evicted first, and never past a memory budget.

A backend that fails (BackendState.FAILED: its in-flight requests already got their errors) is noticed
by the next request for its model or by the reaper, whichever comes first: the model records the
failure (/health answers 503 naming it), the failed backend is closed and the model loaded again in the
background; requests meanwhile wait for that load. The failure is cleared once a load succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import logging
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from backends.base import Backend, BackendState, BackendUnavailableError, ModelInfo
from backends.inspect import inspect_model
from gateway.api_error import APIError
from gateway.config import ModelSpec

logger = logging.getLogger("tandem.gateway")


class ModelState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"


@dataclass(frozen=True, slots=True)
class ModelFailure:
    """Why a model's backend failed, until it has been loaded again."""

    error: str
    at: float  # wall-clock time (time.time())
    reload_error: str | None = None  # the reload failed too; the next request tries again


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A loaded model as generation code sees it."""

    spec: ModelSpec
    backend: Backend
    adapter: str | None = None  # the LoRA adapter its requests run with (GenerationRequest.adapter)


class ManagedModel:
    """One configured model: its files, its state, and who is using it."""

    # An adapter model (gateway/adapter_models.py) is served by another model's backend: its base. Only
    # base models have a lifecycle of their own; the manager loads, counts and unloads the base for them.
    base: ManagedModel | None = None

    async def prepare_backend(self, backend: Backend) -> None:
        """Called with the loaded backend before each request runs on it (an adapter model loads its
        adapter there); raising refuses the request."""

    def __init__(
        self, spec: ModelSpec, path: Path, default_keep_alive_s: float | None, created: bool = False
    ) -> None:
        self.spec = spec
        self.user_created = created  # made through the API (Modelfile, copy), not in the config file
        self.path = path
        self.default_keep_alive_s = default_keep_alive_s
        self.state = ModelState.UNLOADED
        self.backend: Backend | None = None
        self.load_task: asyncio.Task[Backend] | None = None
        self.in_use = 0
        self.last_used = 0.0
        self.expires_at: float | None = None  # monotonic deadline once idle; None: not scheduled to unload
        self.load_seconds = 0.0
        self.failure: ModelFailure | None = None  # its backend failed and no load has succeeded since
        self.failures = 0  # how many times its backend has failed
        files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
        self.size_bytes = sum(f.stat().st_size for f in files)
        self.created = int(path.stat().st_mtime)

    @property
    def names(self) -> list[str]:
        return [self.spec.name, *self.spec.aliases]

    @functools.cached_property
    def info(self) -> ModelInfo:
        """What the files hold, read once without loading the model."""
        return inspect_model(self.path)

    @property
    def context_length(self) -> int | None:
        if self.backend is not None:
            return self.backend.context_length
        return self.spec.context_length

    @property
    def estimated_bytes(self) -> int:
        # weights plus a margin for the KV cache and buffers; refined per backend when it matters
        return int(self.size_bytes * 1.2) + 64 * 2**20

    def served(self) -> ServedModel:
        if self.backend is None:
            raise BackendUnavailableError(f"model {self.spec.name!r} is not loaded")
        return ServedModel(self.spec, self.backend)


class Lease:
    """A request's hold on a loaded model; released exactly once, then the keep_alive clock starts."""

    def __init__(
        self, manager: ModelManager, model: ManagedModel, keep_alive_s: float | None, loaded_s: float
    ):
        self.model = model
        self.served = model.served()
        self.load_seconds = loaded_s  # time this request spent waiting for the load (Ollama's load_duration)
        self._release = weakref.finalize(self, manager._release, model, keep_alive_s)

    def release(self) -> None:
        self._release()


Loader = Callable[[ManagedModel], Backend]
DEFAULT_KEEP_ALIVE = object()  # the model's own keep_alive, when a request names none


class ModelManager:
    def __init__(
        self,
        models: list[ManagedModel],
        loader: Loader,
        max_loaded: int,
        memory_budget_bytes: int,
        default_keep_alive_s: float | None = 300.0,
        adapters: list[ManagedModel] | None = None,
    ) -> None:
        self._models = models
        self._adapters = adapters or []  # adapter models: names of their own, their base's backend
        self.default_keep_alive_s = default_keep_alive_s  # for models created at run time
        self._index()
        self._loader = loader
        self._max_loaded = max_loaded
        self._memory_budget = memory_budget_bytes
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task | None = None
        self._preloads: dict[ManagedModel, asyncio.Task[Backend]] = {}  # begun by begin_load, for start()

    def resolve(self, name: str) -> ManagedModel | None:
        return self._by_name.get(name)

    def _index(self) -> None:
        self._by_name = {name: model for model in [*self._models, *self._adapters] for name in model.names}

    def adapters(self) -> list[ManagedModel]:
        """The adapter models (each served by its `base`); iterating the manager yields base models only."""
        return list(self._adapters)

    def adapters_of(self, base: ManagedModel) -> list[ManagedModel]:
        return [a for a in self._adapters if a.base is base]

    async def add(self, model: ManagedModel) -> None:
        """Serve a model created at run time, replacing an earlier created model of the same name."""
        async with self._lock:
            taken = [self._by_name[n] for n in model.names if n in self._by_name]
            if any(not m.user_created for m in taken):
                raise APIError(400, f"model {model.spec.name!r} is defined in the config file; edit it there")
            for old in taken:
                if self.adapters_of(old) and model.base is not None:
                    raise APIError(409, f"model {old.spec.name!r} has adapters; it cannot become an adapter")
            for old in taken:
                await self._retire(old)
                for adapter in self.adapters_of(old):  # a re-created base keeps its adapters
                    adapter.base = model
            (self._adapters if model.base is not None else self._models).append(model)
            self._index()

    async def remove(self, model: ManagedModel) -> None:
        async with self._lock:
            if self.adapters_of(model):
                names = ", ".join(a.spec.name for a in self.adapters_of(model))
                raise APIError(409, f"model {model.spec.name!r} serves adapters ({names}): remove them first")
            await self._retire(model)
            self._index()

    async def _retire(self, model: ManagedModel) -> None:
        if model.in_use or (model.base is None and model.state is ModelState.LOADING):
            raise APIError(409, f"model {model.spec.name!r} is in use; try again when its requests finish")
        if model.base is not None:
            self._adapters.remove(model)
            return
        if model.state is ModelState.LOADED:
            await self._unload(model)
        self._models.remove(model)

    def __iter__(self) -> Iterator[ManagedModel]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def loaded(self) -> list[ManagedModel]:
        return [m for m in self._models if m.state is ModelState.LOADED]

    def begin_load(self, model: ManagedModel) -> bool:
        """Start loading `model` on a worker thread now and return at once (call it from the event loop's
        thread, before synchronous work: `tandem serve` does, so llama.cpp's load, C code that releases the
        GIL, runs on another core while the app is imported). From then on it is the model's load in
        progress, as if a request had started it: requests and start() wait for it (one load), a failure
        reaches them as any load's would, and if no request comes the model unloads once idle past its
        keep_alive. Returns whether the load began: not for an adapter model, a model already loading or
        loaded, one with keep_alive 0 (it would unload again at once), or one with no room beside what is
        loaded now (its first request makes room or answers why not, as before)."""
        if (
            model.base is not None
            or model.state is not ModelState.UNLOADED
            or model.default_keep_alive_s == 0
            or self._lock.locked()  # a load or unload is deciding what is resident
            or not self._has_room(model)
        ):
            return False
        model.state = ModelState.LOADING
        model.load_task = asyncio.create_task(self._load(model, idle_after=True))
        model.load_task.add_done_callback(_retrieve_error)  # no request may wait: a failure is logged anyway
        if model.spec.preload:  # start()'s load of it: start() fails if this one does, rather than retry
            self._preloads[model] = model.load_task
        return True

    async def start(self) -> None:
        """Preload what asks for it and start unloading idle models; idempotent."""
        if self._reaper is not None:
            return
        for model in self._models:
            if model.spec.preload:
                begun = self._preloads.pop(model, None)
                if begun is not None:
                    await asyncio.shield(begun)  # raises as a load begun here would
                (await self.acquire(model, keep_alive_s=DEFAULT_KEEP_ALIVE)).release()
        self._reaper = asyncio.create_task(self._reap())

    async def acquire(
        self, model: ManagedModel, keep_alive_s: float | object | None = DEFAULT_KEEP_ALIVE
    ) -> Lease:
        """Hold `model` loaded for one request, loading it first if needed."""
        keep = model.default_keep_alive_s if keep_alive_s is DEFAULT_KEEP_ALIVE else keep_alive_s
        started = time.perf_counter()
        target = model.base or model  # an adapter model holds its base loaded
        self.check_backend(target)
        while target.state is not ModelState.LOADED:
            if target.state is ModelState.UNLOADED:
                async with self._lock:
                    if target.state is ModelState.UNLOADED:
                        await self._make_room(target)
                        target.state = ModelState.LOADING
                        target.load_task = asyncio.create_task(self._load(target))
            assert target.load_task is not None
            await asyncio.shield(target.load_task)
        target.in_use += 1
        target.expires_at = None
        if target is not model:
            assert target.backend is not None
            try:
                await model.prepare_backend(target.backend)
            except BaseException:
                self._release(target, keep)  # type: ignore[arg-type]
                raise
            model.in_use += 1
        waited = time.perf_counter() - started
        return Lease(self, model, keep, waited if waited > 1e-3 else 0.0)  # type: ignore[arg-type]

    def _load(self, model: ManagedModel, idle_after: bool = False) -> Coroutine[Any, Any, Backend]:
        """The loader begins on a worker thread now, not when the returned coroutine first runs: begin_load
        returns to synchronous work that keeps the event loop from running anything until it is done."""
        started = time.perf_counter()
        logger.info("loading model %r from %s", model.spec.name, model.path)
        context = contextvars.copy_context()  # as asyncio.to_thread
        running = asyncio.get_running_loop().run_in_executor(None, context.run, self._loader, model)
        return self._loaded(model, running, started, idle_after)

    async def _loaded(
        self, model: ManagedModel, running: asyncio.Future[Backend], started: float, idle_after: bool
    ) -> Backend:
        try:
            backend = await running
        except Exception as exc:
            model.state, model.load_task = ModelState.UNLOADED, None
            if model.failure is not None:
                model.failure = dataclasses.replace(model.failure, reload_error=str(exc))
            logger.error("model %r failed to load: %s", model.spec.name, exc)
            raise BackendUnavailableError(f"model {model.spec.name!r} failed to load: {exc}") from exc
        model.backend, model.state, model.failure = backend, ModelState.LOADED, None
        model.load_seconds = time.perf_counter() - started
        model.last_used = time.monotonic()
        keep = model.default_keep_alive_s
        if idle_after and keep is not None:  # begun by no request: idle from now (a waiter clears it)
            model.expires_at = model.last_used + keep
        logger.info("model %r loaded in %.2fs", model.spec.name, model.load_seconds)
        return backend

    # --- failed backends ---------------------------------------------------------------------------------
    def check_backend(self, model: ManagedModel) -> None:
        """If the model's backend has failed, record it and replace the backend (in the background)."""
        backend = model.backend
        if model.state is not ModelState.LOADED or backend is None:
            return
        health = backend.health
        if health.state is not BackendState.FAILED:
            return
        model.failure = ModelFailure(health.error or "unknown error", time.time())
        model.failures += 1
        logger.error("model %r failed (%s): reloading it", model.spec.name, model.failure.error)
        model.backend, model.state, model.expires_at = None, ModelState.LOADING, None
        model.load_task = asyncio.create_task(self._reload(model, backend))
        model.load_task.add_done_callback(_retrieve_error)  # a failed reload is logged and reported already

    async def _reload(self, model: ManagedModel, failed: Backend) -> Backend:
        try:
            await failed.aclose()
        except Exception:
            logger.exception("closing the failed backend of %r", model.spec.name)
        return await self._load(model)

    def failed(self) -> list[ManagedModel]:
        """Models whose backend failed and that have not been loaded again since."""
        return [m for m in self._models if m.failure is not None]

    async def _make_room(self, model: ManagedModel) -> None:
        if model.estimated_bytes > self._memory_budget:
            raise APIError(
                503,
                f"model {model.spec.name!r} needs about {model.estimated_bytes / 2**30:.1f} GiB, "
                f"more than the memory budget of {self._memory_budget / 2**30:.1f} GiB "
                "(TANDEM_MEMORY_BUDGET_GB)",
                type="server_error",
                code="insufficient_memory",
            )
        while not self._has_room(model):
            resident = [m for m in self._models if m.state is not ModelState.UNLOADED and m is not model]
            idle = [m for m in resident if m.state is ModelState.LOADED and m.in_use == 0]
            if not idle:
                raise APIError(
                    503,
                    f"cannot load model {model.spec.name!r} now: every loaded model is busy "
                    f"(at most {self._max_loaded} loaded, TANDEM_MAX_LOADED_MODELS)",
                    type="server_overloaded",
                    code="models_busy",
                    headers={"Retry-After": "1"},
                )
            victim = min(idle, key=lambda m: m.last_used)
            logger.info("unloading model %r to make room for %r", victim.spec.name, model.spec.name)
            await self._unload(victim)

    def _has_room(self, model: ManagedModel) -> bool:
        """Whether `model` fits beside every other model loaded or loading, in count and in memory."""
        resident = [m for m in self._models if m.state is not ModelState.UNLOADED and m is not model]
        used = sum(m.estimated_bytes for m in resident)
        return len(resident) < self._max_loaded and used + model.estimated_bytes <= self._memory_budget

    def _release(self, model: ManagedModel, keep_alive_s: float | None) -> None:
        if model.base is not None:  # an adapter model: its base is what was held
            model.in_use -= 1
            model.last_used = time.monotonic()
            model = model.base
        model.in_use -= 1
        model.last_used = time.monotonic()
        if model.in_use == 0 and model.state is ModelState.LOADED:
            model.expires_at = None if keep_alive_s is None else model.last_used + keep_alive_s
            if keep_alive_s == 0:
                with contextlib.suppress(RuntimeError):  # no running loop: the reaper will not run either
                    asyncio.get_running_loop().create_task(self.unload(model))

    async def unload(self, model: ManagedModel) -> bool:
        """Unload now if idle; returns whether it is unloaded."""
        async with self._lock:
            if model.state is ModelState.LOADED and model.in_use == 0:
                await self._unload(model)
        return model.state is ModelState.UNLOADED

    async def _unload(self, model: ManagedModel) -> None:
        backend, model.backend = model.backend, None
        model.state, model.load_task, model.expires_at = ModelState.UNLOADED, None, None
        if backend is not None:
            await backend.aclose()
        logger.info("model %r unloaded", model.spec.name)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for model in list(self._models):
                self.check_backend(model)
                idle = model.state is ModelState.LOADED and model.in_use == 0
                if idle and model.expires_at is not None and now >= model.expires_at:
                    await self.unload(model)

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for model in self._models:
            if model.load_task is not None and not model.load_task.done():
                with contextlib.suppress(Exception):
                    await model.load_task
            if model.backend is not None:
                with contextlib.suppress(Exception):
                    await self._unload(model)


def _retrieve_error(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
