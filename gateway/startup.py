"""From the active profile to a ModelManager: check every model's files at start, load backends on demand."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from backends.base import Backend, BackendCapabilities
from backends.inspect import inspect_model
from gateway.adapter_models import config_adapters, stored_adapters
from gateway.adapter_store import AdapterStore
from gateway.config import ConfigError, ModelSpec, Profile
from gateway.durations import parse_keep_alive
from gateway.model_store import ModelStore
from gateway.registry import ManagedModel, ModelManager
from gateway.settings import Settings

logger = logging.getLogger("tandem.gateway")
AVAILABLE_BACKENDS = ("llamacpp", "paged")
DEFAULT_MAX_LORAS = 4  # LoRA slots of a paged model whose config lists adapters but sets no engine.max_loras

DEMO_HINT = (
    "This is tandem's random-weight demo model: it answers in gibberish. To serve a real model, point a "
    "model entry's `path` at {what} in config/tandem.yaml (or in a file given by --config / TANDEM_CONFIG)."
)
REAL_MODEL = {"llamacpp": "a GGUF file", "paged": "a Hugging Face checkpoint directory or a GGUF file"}


def ensure_model_files(spec: ModelSpec, key: str, source: str) -> Path:
    """The model's path, generating the demo model there first if the entry asks for it."""
    path = spec.resolved_path()
    if spec.demo == "tiny" and not path.exists():
        expected = {"llamacpp": "model.gguf", "paged": "hf"}.get(spec.backend or "")
        if path.name != expected:
            raise ConfigError(source, [(f"{key}.path", f"a demo model's path must end in /{expected}")])
        from backends.tiny_model import make_tiny_model

        logger.info("generating the demo model in %s (first use; no download)", path.parent)
        make_tiny_model(path.parent, arch="llama", seed=0)
    elif spec.demo == "smollm2" and not path.exists():
        if path.suffix != ".gguf":
            raise ConfigError(source, [(f"{key}.path", "the smollm2 demo model's path must end in .gguf")])
        from backends.demo_model import DemoModelError, ensure_demo_model

        try:
            ensure_demo_model(path)
        except DemoModelError as exc:
            raise ConfigError(source, [(f"{key}.path", str(exc))]) from None
    if not path.exists():
        raise ConfigError(source, [(f"{key}.path", f"no such file or directory: {path}")])
    _check_format(spec, path, f"{key}.path", source)
    # a cheap read of the header: a broken file fails now, not at first use. A llama.cpp model that loads
    # at start needs none: its load, begun at once (begin_preloads), is that check, and skipping this one
    # (and the import of its reader) takes ~0.1 s off the cold start.
    try:
        if not (spec.preload and spec.backend == "llamacpp"):
            inspect_model(path)
    except Exception as exc:
        raise ConfigError(
            source, [(f"{key}.path", f"cannot load {path}: not a readable model ({exc})")]
        ) from None
    if spec.backend == "paged":  # an architecture or quantization the engine cannot run fails now
        from backends.inspect import check_paged_servable
        from backends.paged.model_config import UnsupportedModelError

        try:
            check_paged_servable(path)
        except UnsupportedModelError as exc:
            raise ConfigError(
                source, [(f"{key}.path", f"the paged engine cannot serve {path}: {exc}")]
            ) from None
    if spec.demo == "tiny":
        hint = DEMO_HINT.format(what=REAL_MODEL.get(spec.backend or "", "a model"))
        logger.info("model %r: demo model at %s. %s", spec.name, path, hint)
    elif spec.demo == "smollm2":
        logger.info("model %r: the demo model SmolLM2-135M-Instruct (Q4_1) at %s", spec.name, path)
    return path


# What each backend reads: llama.cpp only GGUF files; the paged engine Hugging Face checkpoint directories
# and GGUF files (dequantized at load).
ACCEPTED_FORMATS = {"llamacpp": ("gguf",), "paged": ("checkpoint", "gguf")}
FORMAT_NAMES = {"gguf": "a GGUF file", "checkpoint": "a Hugging Face checkpoint directory (config.json)"}


def model_format(path: Path) -> str:
    """'gguf', 'checkpoint' or 'unknown', from the path itself (a GGUF file starts with b"GGUF")."""
    if path.is_dir():
        return "checkpoint" if (path / "config.json").is_file() else "unknown"
    try:
        with path.open("rb") as file:
            return "gguf" if file.read(4) == b"GGUF" else "unknown"
    except OSError:
        return "unknown"


def _check_format(spec: ModelSpec, path: Path, key: str, source: str) -> None:
    accepted = ACCEPTED_FORMATS.get(spec.backend or "")
    found = model_format(path)
    if accepted is None or found in accepted:
        return
    expected = " or ".join(FORMAT_NAMES[f] for f in accepted)
    what = FORMAT_NAMES.get(found, "neither a GGUF file nor a checkpoint directory with a config.json")
    hint = next(
        (f"; {FORMAT_NAMES[found].split(' (')[0]} is served by backend: {other}"
         for other, formats in ACCEPTED_FORMATS.items() if other != spec.backend and found in formats),
        "",
    )  # fmt: skip
    problem = f"backend {spec.backend!r} expected {expected}, but {path} is {what}{hint}"
    raise ConfigError(source, [(key, problem)])


def load_backend(model: ManagedModel, settings: Settings) -> Backend:
    """Runs in a worker thread: may take seconds (llama.cpp) to minutes (a large checkpoint)."""
    spec = model.spec
    if spec.backend == "llamacpp":
        from backends.llamacpp.backend import LlamaCppBackend

        return LlamaCppBackend.load(
            model.path,
            model_name=spec.name,
            context_length=spec.context_length,
            max_queued=settings.max_queued_requests,
            threads=settings.llamacpp_threads,
            retry_after_s=settings.retry_after_s,
            parallel=spec.parallel or settings.llamacpp_parallel,
            kv_cells=spec.kv_cells,
            kv_unified=bool(spec.kv_unified),
        )
    if spec.backend == "paged":
        from backends.paged.backend import PagedBackend  # imports torch: only when a paged model loads
        from backends.paged.config import EngineConfig

        engine = spec.engine or EngineConfig()
        if spec.adapters and engine.max_loras == 0:  # listing adapters turns LoRA on (vLLM: --enable-lora)
            engine = engine.model_copy(update={"max_loras": min(len(spec.adapters), DEFAULT_MAX_LORAS)})
        if spec.context_length is not None and engine.max_model_len is None:
            engine = engine.model_copy(update={"max_model_len": spec.context_length})
        return PagedBackend.load(model.path, engine, spec.name)
    raise NotImplementedError(f"backend {spec.backend!r} is not available in this version yet")


def begin_preloads(models: ModelManager) -> list[ManagedModel]:
    """`tandem serve`, once the models are checked and before the app is imported: begin loading the
    llama.cpp models that load at start (preload) on worker threads. llama.cpp's load is C code that
    releases the GIL, so it runs on another core while this thread imports the app; start() then waits
    for those loads rather than starting them. llama.cpp's modules are imported here, on this thread,
    first: Python runs one thread at a time anyway, and two threads importing at once can deadlock on a
    circular import. A paged model is left to start(): most of its load is importing torch, Python that
    would only contend with the app's imports."""
    begun = []
    for model in models:
        if model.spec.preload and model.spec.backend == "llamacpp":
            import backends.llamacpp.backend  # noqa: F401 (see above)

            if models.begin_load(model):
                begun.append(model)
    return begun


def model_capabilities(model: ManagedModel) -> BackendCapabilities:
    """The loaded backend's capabilities; before it loads, those its kind declares (torch-free)."""
    if model.backend is not None:
        return model.backend.capabilities
    if model.spec.backend == "llamacpp":
        from backends.llamacpp import CAPABILITIES as LLAMACPP

        return LLAMACPP
    if model.spec.backend == "paged":
        from backends.paged import CAPABILITIES as PAGED

        return PAGED
    raise NotImplementedError(f"backend {model.spec.backend!r} is not available in this version yet")


def _memory_budget(settings: Settings) -> int:
    if settings.memory_budget_gb is not None:
        return int(settings.memory_budget_gb * 2**30)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * 0.8)  # leave the rest to the OS and the gateway itself


def _stored_models(
    store: ModelStore, taken: set[str], default_keep_alive: float | None
) -> list[ManagedModel]:
    """Models created through the API. One that cannot be served now is reported and kept on disk."""
    models = []
    for spec in store.load():
        path = spec.resolved_path()
        if spec.name in taken:
            logger.warning("created model %r is shadowed by the config file's model of that name", spec.name)
        elif spec.backend not in AVAILABLE_BACKENDS or not path.exists():
            logger.error("created model %r cannot be served: %s is missing or its backend is not available",
                         spec.name, path)  # fmt: skip
        elif model_format(path) not in ACCEPTED_FORMATS.get(spec.backend or "", ()):
            logger.error("created model %r cannot be served: %s is not a model file backend %r reads",
                         spec.name, path, spec.backend)  # fmt: skip
        else:
            keep_alive = (
                parse_keep_alive(spec.keep_alive) if spec.keep_alive is not None else default_keep_alive
            )
            models.append(ManagedModel(spec, path, keep_alive, created=True))
            taken.add(spec.name)
    return models


def _check_routing(profile: Profile, spec: ModelSpec, key: str, source: str) -> None:
    by_name = {name: other for other in profile.models for name in [other.name, *other.aliases]}
    by_name |= {a.name: other for other in profile.models for a in other.adapters}  # where their base runs
    for index, deployment in enumerate(spec.deployments):
        if by_name[deployment.model].deployments:
            problem = f"{deployment.model!r} is itself a route: deployments must be models that run somewhere"
            raise ConfigError(source, [(f"{key}.deployments[{index}].model", problem)])
    remote = spec.remote
    if remote is not None and remote.api_key_env and remote.api_key_env not in os.environ:
        logger.warning(
            "model %r: %s is not set; calling %s without an API key",
            spec.name,
            remote.api_key_env,
            remote.api_base,
        )


def build_manager(
    profile: Profile, profile_name: str, settings: Settings, source: str, store: ModelStore
) -> ModelManager:
    models: list[ManagedModel] = []
    adapters: list[ManagedModel] = []
    default_keep_alive = parse_keep_alive(settings.keep_alive)
    for index, spec in enumerate(profile.models):
        key = f"profiles.{profile_name}.models[{index}]"
        _check_routing(profile, spec, key, source)
        if spec.backend not in AVAILABLE_BACKENDS:
            continue  # remote upstreams and routes: the Router serves them, nothing to load here
        path = ensure_model_files(spec, key, source)
        keep_alive = parse_keep_alive(spec.keep_alive) if spec.keep_alive is not None else default_keep_alive
        models.append(ManagedModel(spec, path, keep_alive))
        adapters += config_adapters(models[-1], key, source)
    models += _stored_models(store, {n for m in models for n in m.names}, default_keep_alive)
    taken = {n for m in [*models, *adapters] for n in m.names}
    adapters += stored_adapters(AdapterStore(store), models, taken)
    return ModelManager(
        models,
        loader=lambda model: load_backend(model, settings),
        max_loaded=settings.max_loaded_models,
        memory_budget_bytes=_memory_budget(settings),
        default_keep_alive_s=default_keep_alive,
        adapters=adapters,
    )
