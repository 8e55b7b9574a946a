"""LoRA adapters served as models of their own: a name clients send, run by the base model's backend.

An adapter model has no lifecycle: acquiring it acquires its base (loading the base if needed) and loads
the adapter onto the base's backend on first use (`prepare_backend`); its requests carry
GenerationRequest.adapter. Everything keyed by model name (key allow-lists, routing, limits, usage,
metrics) sees the adapter's own name. A backend that cannot apply adapters refuses its requests with a 400
naming why: an adapter model is never silently answered by the base alone.
"""

from __future__ import annotations

import asyncio
import json
import logging

from backends.base import Backend, BackendError, ModelInfo
from backends.lora_host import AdapterHost
from gateway.adapter_store import AdapterStore
from gateway.api_error import APIError
from gateway.config import AdapterSpec, ConfigError, ModelSpec
from gateway.registry import ManagedModel, ModelFailure, ModelState, ServedModel

logger = logging.getLogger("tandem.gateway")

# What each backend reads as an adapter; also what `tandem make-tiny-model --lora` writes for each.
ADAPTER_FORMATS = {"paged": "a PEFT directory (adapter_config.json)", "llamacpp": "a GGUF LoRA file"}


def adapter_spec(base: ModelSpec, adapter: AdapterSpec) -> ModelSpec:
    """The adapter model's entry: the base's settings (template, system prompt, parameters, context) under
    the adapter's name. Its base's fallbacks are not its own: falling back from a fine-tune to another model
    would change the model behind the name without saying so."""
    return base.model_copy(
        update={
            "name": adapter.name,
            "aliases": [],
            "adapters": [],
            "preload": False,
            "demo": None,
            "fallbacks": [],
            "retries": 0,
        },
    )


def adapter_host(backend: Backend, model: str, base: str) -> AdapterHost:
    if not isinstance(backend, AdapterHost):
        raise APIError(
            400,
            f"model '{model}' is a LoRA adapter of '{base}', but backend '{backend.kind}' serving it cannot "
            "apply LoRA adapters yet",
            param="model",
            code="adapters_unsupported",
        )
    return backend


class AdapterModel(ManagedModel):
    """One adapter of a base model, named and listed like a model."""

    def __init__(self, base: ManagedModel, adapter: AdapterSpec, created: bool = False) -> None:
        # not ManagedModel.__init__: an adapter has no model files and no lifecycle; what it has of a
        # model's state is its base's (the properties below)
        self.base = base
        self.adapter = adapter
        self.spec = adapter_spec(base.spec, adapter)
        self.user_created = created
        self.path = adapter.resolved_path()
        self.default_keep_alive_s = base.default_keep_alive_s
        self.load_task = None
        self.in_use = 0  # its own requests (its base counts them too)
        self.last_used = 0.0
        self.load_seconds = 0.0
        self.failures = 0
        files = [f for f in self.path.rglob("*") if f.is_file()] if self.path.is_dir() else [self.path]
        self.size_bytes = sum(f.stat().st_size for f in files if f.exists())
        self.created = int(self.path.stat().st_mtime) if self.path.exists() else base.created
        self._loading = asyncio.Lock()

    @property
    def parent(self) -> ManagedModel:
        assert self.base is not None
        return self.base

    @property
    def state(self) -> ModelState:  # type: ignore[override]
        return self.parent.state

    @property
    def backend(self) -> Backend | None:  # type: ignore[override]
        return self.parent.backend

    @property
    def expires_at(self) -> float | None:  # type: ignore[override]
        return self.parent.expires_at

    @property
    def failure(self) -> ModelFailure | None:  # type: ignore[override]
        return self.parent.failure

    @property
    def info(self) -> ModelInfo:
        return self.parent.info  # listings describe the weights that run: the base's

    @property
    def context_length(self) -> int | None:
        return self.parent.context_length

    def served(self) -> ServedModel:
        base = self.parent.served()
        return ServedModel(self.spec, base.backend, adapter=self.adapter.name)

    async def prepare_backend(self, backend: Backend) -> None:
        """Load the adapter onto the base's backend if it is not there yet (first use, or a reloaded base)."""
        host = adapter_host(backend, self.spec.name, self.parent.spec.name)
        if self.adapter.name in host.adapters():
            return
        async with self._loading:
            if self.adapter.name not in host.adapters():
                await load_adapter(host, self.adapter, self.parent.spec.name)

    @property
    def loaded(self) -> bool:
        """Whether the adapter is loaded on its base's backend now (adapters load on first use)."""
        backend = self.parent.backend
        return isinstance(backend, AdapterHost) and self.adapter.name in backend.adapters()

    async def unload_from_backend(self) -> None:
        """Take the adapter off its base's backend, if it is loaded there (the base itself stays)."""
        backend = self.parent.backend
        if isinstance(backend, AdapterHost) and self.adapter.name in backend.adapters():
            await asyncio.to_thread(backend.remove_adapter, self.adapter.name)


async def load_adapter(host: AdapterHost, adapter: AdapterSpec, base: str) -> None:
    try:
        await asyncio.to_thread(host.add_adapter, adapter.name, adapter.resolved_path(), adapter.scale)
    except (BackendError, OSError) as exc:
        raise APIError(
            400,
            f"LoRA adapter '{adapter.name}' cannot be loaded on '{base}': {exc}",
            param="model",
            code="invalid_adapter",
        ) from None


def adapter_file_problem(backend: str | None, adapter: AdapterSpec) -> str | None:
    """What is wrong with an adapter's files for this backend, from a cheap look (torch-free); None: fine.
    The backend checks the rest (shapes, ranks, targets) when it loads the adapter."""
    try:
        path = adapter.resolved_path()
        if not path.exists():
            return f"no such file or directory: {path}"
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, "~nobody/...", a name too long
        return f"{adapter.path!r} is not a usable path ({exc})"
    if backend == "paged":
        config = path / "adapter_config.json"
        if not path.is_dir() or not config.is_file():
            return f"backend 'paged' reads {ADAPTER_FORMATS['paged']}, but {path} is not one"
        try:
            kind = json.loads(config.read_text()).get("peft_type")
        except (OSError, ValueError, AttributeError) as exc:
            return f"{config} is not readable JSON ({exc})"
        if str(kind).upper() != "LORA":
            return f"{config} describes a {kind!r} adapter; only LoRA is served"
        return None
    if backend == "llamacpp":
        magic = b""
        if path.is_file():
            try:
                with path.open("rb") as file:
                    magic = file.read(4)
            except OSError as exc:
                return f"cannot read {path}: {exc.strerror or exc}"
        if magic != b"GGUF":
            hint = (
                " (a PEFT directory: convert it with llama.cpp's convert_lora_to_gguf.py)"
                if path.is_dir()
                else ""
            )
            return f"backend 'llamacpp' reads {ADAPTER_FORMATS['llamacpp']}, but {path} is not one{hint}"
        return None
    return f"backend {backend!r} cannot apply LoRA adapters"


def config_adapters(base: ManagedModel, key: str, source: str) -> list[AdapterModel]:
    """The config entry's adapters as models, their files checked now (a missing one fails the start)."""
    adapters = []
    for index, adapter in enumerate(base.spec.adapters):
        problem = adapter_file_problem(base.spec.backend, adapter)
        if problem is not None:
            raise ConfigError(source, [(f"{key}.adapters[{index}].path", problem)])
        adapters.append(AdapterModel(base, adapter))
    return adapters


def stored_adapters(store: AdapterStore, models: list[ManagedModel], taken: set[str]) -> list[ManagedModel]:
    """Adapters created at run time. One that cannot be served now is reported and kept on disk."""
    by_name = {name: model for model in models for name in model.names}
    adapters: list[ManagedModel] = []
    for record in store.load():
        name, base = record.adapter.name, by_name.get(record.base)
        problem = None if base is None else adapter_file_problem(base.spec.backend, record.adapter)
        if name in taken:
            logger.warning("created adapter %r is shadowed by a model or adapter of that name", name)
        elif base is None:
            logger.error("created adapter %r cannot be served: its base model %r is gone", name, record.base)
        elif problem is not None:
            logger.error("created adapter %r cannot be served: %s", name, problem)
        else:
            adapters.append(AdapterModel(base, record.adapter, created=True))
            taken.add(name)
    return adapters
