"""The models a running tandem serves: loaded at start from the active profile, found by name or alias."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from backends.base import Backend
from gateway.config import ConfigError, ModelSpec, Profile
from gateway.settings import Settings

logger = logging.getLogger("tandem.gateway")

DEMO_HINT = (
    "This is tandem's random-weight demo model: it answers in gibberish. To serve a real model, "
    "point a model entry's `path` at a GGUF file in config/tandem.yaml "
    "(or in a file given by --config / TANDEM_CONFIG)."
)


@dataclass(slots=True)
class ServedModel:
    spec: ModelSpec
    backend: Backend
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def names(self) -> list[str]:
        return [self.spec.name, *self.spec.aliases]


class ModelRegistry:
    def __init__(self, models: list[ServedModel]) -> None:
        self._models = models
        self._by_name = {name: model for model in models for name in model.names}

    def resolve(self, name: str) -> ServedModel | None:
        return self._by_name.get(name)

    def __iter__(self):
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    async def aclose(self) -> None:
        await asyncio.gather(*(model.backend.aclose() for model in self._models), return_exceptions=True)


def ensure_model_files(spec: ModelSpec, key: str, source: str) -> Path:
    """The model's path, generating the demo model there first if the entry asks for it."""
    path = spec.resolved_path()
    if spec.demo and not path.exists():
        expected = {"llamacpp": "model.gguf", "paged": "hf"}.get(spec.backend)
        if path.name != expected:
            raise ConfigError(source, [(f"{key}.path", f"a demo model's path must end in /{expected}")])
        from backends.tiny_model import make_tiny_model

        logger.info("generating the demo model in %s (first use; no download)", path.parent)
        make_tiny_model(path.parent, arch="llama", seed=0)
    if not path.exists():
        raise ConfigError(source, [(f"{key}.path", f"no such file or directory: {path}")])
    if spec.demo:
        logger.info("model %r: demo model at %s. %s", spec.name, path, DEMO_HINT)
    return path


def _load_backend(spec: ModelSpec, path: Path, settings: Settings, key: str, source: str) -> Backend:
    try:
        return _construct_backend(spec, path, settings)
    except ConfigError:
        raise
    except NotImplementedError as exc:
        raise ConfigError(source, [(f"{key}.backend", str(exc))]) from None
    except Exception as exc:
        raise ConfigError(source, [(f"{key}.path", f"cannot load {path}: {exc}")]) from exc


def _construct_backend(spec: ModelSpec, path: Path, settings: Settings) -> Backend:
    if spec.backend == "llamacpp":
        from backends.llamacpp.backend import LlamaCppBackend

        return LlamaCppBackend.load(
            path,
            model_name=spec.name,
            context_length=spec.context_length,
            max_queued=settings.max_queued_requests,
            threads=settings.llamacpp_threads,
            retry_after_s=settings.retry_after_s,
        )
    raise NotImplementedError(f"backend {spec.backend!r} is not available in this version yet")


async def load_registry(
    profile: Profile, profile_name: str, settings: Settings, source: str
) -> ModelRegistry:
    models: list[ServedModel] = []
    try:
        for index, spec in enumerate(profile.models):
            key = f"profiles.{profile_name}.models[{index}]"
            path = await asyncio.to_thread(ensure_model_files, spec, key, source)
            backend = await asyncio.to_thread(_load_backend, spec, path, settings, key, source)
            models.append(ServedModel(spec, backend))
    except BaseException:
        await ModelRegistry(models).aclose()
        raise
    return ModelRegistry(models)
