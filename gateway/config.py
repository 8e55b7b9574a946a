"""The user-facing YAML config: profiles of models. Errors name the file, the key and what is wrong."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backends.paged.config import EngineConfig
from backends.remote.upstream import UpstreamTimeouts
from backends.tools.detect import parser_class
from gateway.auth.settings import AuthSettings
from gateway.durations import parse_keep_alive

DEFAULT_CONFIG_PATH = Path("config/tandem.yaml")
BUILTIN_CONFIG_NAME = "<built-in default>"
_NAME_PATTERN = re.compile(r"[A-Za-z0-9*?][A-Za-z0-9._:/@+*?-]*")
MAX_NAME_LENGTH = 255  # bytes: a created model's record is a file named after it (NAME_MAX)


class ConfigError(Exception):
    """A config problem, rendered as `FILE: KEY: what is wrong` (one line per problem)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(
            "\n".join(f"{source}: {key}: {msg}" if key else f"{source}: {msg}" for key, msg in problems)
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelParameters(_Strict):
    """Default sampling parameters of a model (Modelfile PARAMETER); a request's own values win."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    seed: int | None = None
    stop: list[str] | None = None


class MessageSpec(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


_UPSTREAM_TIMEOUTS = UpstreamTimeouts()  # the defaults


class RemoteSpec(_Strict):
    """An OpenAI-compatible upstream server, reached through litellm."""

    api_base: str = Field(description="e.g. http://vllm:8000/v1")
    model: str | None = Field(None, description="the upstream's model name; default: the name requested")
    api_key_env: str | None = Field(None, description="environment variable holding the upstream's API key")
    provider: str = Field("openai", description="litellm provider prefix (openai = any OpenAI-compatible)")
    client: Literal["direct", "litellm"] | None = Field(
        None,
        description="direct: pass OpenAI requests through as they are (default for provider openai); "
        "litellm: translate through litellm (needed for every other provider)",
    )
    connect_timeout_s: float = Field(_UPSTREAM_TIMEOUTS.connect_s, gt=0, description="to open a connection")
    first_byte_timeout_s: float | None = Field(
        None,
        gt=0,
        description="to the answer's first byte (a stream's first event); "
        f"default: the model's timeout_s, else {_UPSTREAM_TIMEOUTS.first_byte_s:g}",
    )
    idle_timeout_s: float = Field(
        _UPSTREAM_TIMEOUTS.idle_s, gt=0, description="between two pieces of an answer once it started"
    )

    @model_validator(mode="after")
    def _client_fits_provider(self) -> RemoteSpec:
        if self.client == "direct" and self.provider != "openai":
            raise ValueError(f"provider {self.provider!r} needs client: litellm (only openai passes through)")
        return self

    @property
    def via_litellm(self) -> bool:
        return self.client == "litellm" or (self.client is None and self.provider != "openai")

    def timeouts(self, model_timeout_s: float | None) -> UpstreamTimeouts:
        first_byte = self.first_byte_timeout_s or model_timeout_s or _UPSTREAM_TIMEOUTS.first_byte_s
        return UpstreamTimeouts(self.connect_timeout_s, first_byte, self.idle_timeout_s)


class DeploymentSpec(_Strict):
    model: str = Field(description="another model of this profile that can serve the request")
    weight: float = Field(1.0, ge=0, description="share of the traffic under strategy: weighted")


class AdapterSpec(_Strict):
    """A LoRA adapter on a model: a model name of its own, served by its base model's backend."""

    name: str = Field(description="what clients send as `model` to use the adapter")
    path: str = Field(description="a PEFT directory (backend paged) or a GGUF LoRA file (backend llamacpp)")
    scale: float = Field(1.0, ge=0, description="multiplies the adapter's effect (llama.cpp's --lora-scaled)")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_PATTERN.fullmatch(value) or any(c in value for c in "*?["):
            raise ValueError(f"{value!r} is not a valid adapter name (letters, digits and ._:/@+- only)")
        if len(value) > MAX_NAME_LENGTH:
            raise ValueError(f"an adapter name is at most {MAX_NAME_LENGTH} bytes long, not {len(value)}")
        return value

    def resolved_path(self) -> Path:
        return Path(os.path.expandvars(self.path)).expanduser()


class ModelSpec(_Strict):
    name: str = Field(description="what clients send as `model`; may be a glob ('gpt-*') for remote models")
    backend: Literal["llamacpp", "paged", "remote"] | None = Field(
        None, description="where it runs; none when the entry only routes to `deployments`"
    )
    remote: RemoteSpec | None = Field(None, description="the upstream (backend: remote only)")
    deployments: list[DeploymentSpec] = Field(default_factory=list, description="models that serve this one")
    strategy: Literal["weighted", "least-busy", "latency"] = "weighted"
    fallbacks: list[str] = Field(default_factory=list, description="tried on 5xx, timeout, overflow")
    retries: int = Field(0, ge=0, le=10, description="more attempts on other deployments before fallbacks")
    timeout_s: float | None = Field(None, gt=0, description="no answer by then: failed")
    cooldown_s: float = Field(30.0, ge=0, description="how long a failed deployment is skipped")
    path: str | None = Field(None, description="GGUF file (llamacpp) or Hugging Face checkpoint dir (paged)")
    aliases: list[str] = Field(default_factory=list)
    context_length: int | None = Field(None, gt=0)
    parallel: int | None = Field(
        None, ge=1, le=256, description="llamacpp: requests decoded at once; default TANDEM_LLAMACPP_PARALLEL"
    )
    kv_cells: int | None = Field(
        None, gt=0, description="llamacpp: KV cells of all its requests; default context_length x parallel"
    )
    kv_unified: bool | None = Field(
        None, description="llamacpp: one KV pool all requests share (default: kv_cells/parallel each)"
    )
    system: str | None = Field(None, description="default system prompt (Modelfile SYSTEM)")
    parameters: ModelParameters = Field(default_factory=ModelParameters)
    demo: Literal["tiny", "smollm2"] | None = Field(
        None,
        description="if `path` is missing: tiny (or true) generates tandem's random-weight model there; "
        "smollm2 downloads SmolLM2-135M-Instruct (a real instruct model, a 98 MB GGUF) there",
    )
    preload: bool = Field(False, description="load at start instead of on first use")
    keep_alive: str | int | float | None = Field(
        None, description="how long to stay loaded after the last request ('5m', 0, -1 = forever)"
    )
    engine: EngineConfig | None = Field(None, description="paged engine settings (backend: paged only)")
    messages: list[MessageSpec] = Field(
        default_factory=list, description="conversation that precedes every chat (Modelfile MESSAGE)"
    )
    chat_template: str | None = Field(
        None, description="a Jinja chat template replacing the model's own (Modelfile TEMPLATE)"
    )
    adapters: list[AdapterSpec] = Field(
        default_factory=list, description="LoRA adapters served on this model, each under its own name"
    )
    tool_parser: str | None = Field(
        None,
        description="the tool-call format its output is parsed in (hermes, llama3_json, mistral, ...); "
        "default: read from the chat template",
    )

    @field_validator("name", "aliases")
    @classmethod
    def _check_names(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            if not _NAME_PATTERN.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid model name (letters, digits and ._:/@+-*? only)")
            if len(name) > MAX_NAME_LENGTH:  # ASCII by the pattern: characters are bytes
                raise ValueError(f"a model name is at most {MAX_NAME_LENGTH} bytes long, not {len(name)}")
        return value

    @field_validator("tool_parser")
    @classmethod
    def _check_tool_parser(cls, value: str | None) -> str | None:
        if value is not None:
            parser_class(value)  # UnknownToolParserError is a ValueError: named in the config's error
        return value

    @field_validator("demo", mode="before")
    @classmethod
    def _demo_flag(cls, value: object) -> object:
        if isinstance(value, bool):  # `demo: true` predates the real demo model: it means the tiny one
            return "tiny" if value else None
        return value

    @property
    def is_glob(self) -> bool:
        return any(c in self.name for c in "*?[")

    @field_validator("keep_alive")
    @classmethod
    def _check_keep_alive(cls, value: str | int | float | None) -> str | int | float | None:
        if value is not None:
            parse_keep_alive(value)
        return value

    @model_validator(mode="after")
    def _check_backend_fields(self) -> ModelSpec:
        if (self.backend is None) == (not self.deployments):
            raise ValueError("give either `backend` or `deployments` (a list of other models to route to)")
        if self.backend in ("llamacpp", "paged") and not self.path:
            raise ValueError(f"backend {self.backend!r} needs `path`")
        if (self.backend == "remote") != (self.remote is not None):
            raise ValueError("backend 'remote' and a `remote:` section (api_base, model) go together")
        if self.is_glob and self.backend != "remote" and not self.deployments:
            raise ValueError("only remote models and routes may have a glob as their name")
        if self.adapters and self.backend not in ("llamacpp", "paged"):
            what = f"backend {self.backend!r}" if self.backend else "a route"
            raise ValueError(f"`adapters` (LoRA) need backend 'paged' or 'llamacpp', not {what}")
        if self.engine is not None and self.backend != "paged":
            raise ValueError("`engine` settings apply to backend 'paged' only")
        llamacpp_only = (self.parallel, self.kv_cells, self.kv_unified)
        if any(v is not None for v in llamacpp_only) and self.backend != "llamacpp":
            raise ValueError(
                "`parallel`, `kv_cells` and `kv_unified` apply to backend 'llamacpp' only (paged: `engine`)"
            )
        return self

    def resolved_path(self) -> Path:
        assert self.path is not None
        return Path(os.path.expandvars(self.path)).expanduser()


class Profile(_Strict):
    models: list[ModelSpec] = Field(default_factory=list)
    team_overrides: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="per team, a requested model name served by another model"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Profile:
        seen: dict[str, str] = {}
        for model in self.models:
            for name in [model.name, *model.aliases]:
                if name in seen:
                    raise ValueError(
                        f"model name or alias {name!r} is used twice ({seen[name]} and {model.name})"
                    )
                seen[name] = model.name
        for model in self.models:  # an adapter is a model name of its own: it may not shadow another
            for adapter in model.adapters:
                if adapter.name in seen:
                    raise ValueError(
                        f"adapter name {adapter.name!r} of model {model.name!r} is already used "
                        f"(by {seen[adapter.name]})"
                    )
                seen[adapter.name] = f"an adapter of {model.name}"
        for model in self.models:
            for target in [d.model for d in model.deployments] + model.fallbacks:
                if target not in seen:
                    raise ValueError(f"model {model.name!r} routes to {target!r}, which is not defined")
        for team, overrides in self.team_overrides.items():
            for target in overrides.values():
                if target not in seen:
                    raise ValueError(f"team_overrides.{team} names {target!r}, which is not defined")
        return self


class TandemConfig(_Strict):
    profile: str = "dev"
    profiles: dict[str, Profile]
    auth: AuthSettings = Field(default_factory=AuthSettings)


def _key_of(location: tuple[str | int, ...]) -> str:
    key = ""
    for part in location:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def parse_config(data: Any, source: str) -> TandemConfig:
    if not isinstance(data, dict):
        raise ConfigError(source, [("", "the file must hold a mapping with a `profiles:` key")])
    try:
        return TandemConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            location = tuple(
                p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))
            )
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append((_key_of(location), message))
        raise ConfigError(source, problems) from None


# The real demo model (backends/demo_model.py), fetched into this path on first use.
DEMO_MODEL_PATH = "~/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf"


def builtin_config() -> TandemConfig:
    """What tandem serves with no config file at all: the demo model SmolLM2-135M-Instruct, one GGUF file
    served by llama.cpp under dev and by the paged engine (dequantized at load) under prod."""

    def demo(backend: Literal["llamacpp", "paged"], keep_alive: int | None) -> Profile:
        spec = ModelSpec(
            name="smollm2",
            backend=backend,
            path=DEMO_MODEL_PATH,
            aliases=["default"],
            context_length=2048,
            demo="smollm2",
            # config/tandem.yaml's system prompt. Measured on this 135M 4-bit model: with the template's
            # own default system prompt llama.cpp's first token for "What is the capital of France?" is a
            # near-tie (0.35 logits) that it resolves into French; with this one both backends answer
            # "The capital of France is Paris.".
            system="You are concise.",
            # Greedy unless a request says otherwise: at temperature 1 a 135M model rambles, and even at its
            # model card's 0.2 it flips between answers a near-tie apart. A demo that answers the same
            # question the same way is easier to trust.
            parameters=ModelParameters(temperature=0.0),
            # loaded at start, the load overlapping the server's own start-up (first token ~2 s after
            # `tandem serve`); dev unloads after keep_alive idle as Ollama does, prod never, as vLLM
            preload=True,
            keep_alive=keep_alive,
        )
        return Profile(models=[spec])

    return TandemConfig(
        profile="dev",
        profiles={"dev": demo("llamacpp", keep_alive=None), "prod": demo("paged", keep_alive=-1)},
    )


def load_config(path: Path | None) -> tuple[TandemConfig, str]:
    """The config and the name of where it came from. `path` None: config/tandem.yaml, else built-in."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.is_file():
            return builtin_config(), BUILTIN_CONFIG_NAME
        path = DEFAULT_CONFIG_PATH
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read the config file: {exc.strerror or exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [("", f"{where}not valid YAML ({getattr(exc, 'problem', exc)})")]) from None
    return parse_config(data, source), source


def select_profile(config: TandemConfig, source: str, requested: str | None) -> tuple[str, Profile]:
    """The active profile: `requested` (flag or TANDEM_PROFILE) if given, else the file's `profile:`."""
    name = requested or config.profile
    if name not in config.profiles:
        known = ", ".join(sorted(config.profiles)) or "none"
        key = "profile" if requested is None else "profiles"
        raise ConfigError(source, [(key, f"profile {name!r} is not defined (defined: {known})")])
    return name, config.profiles[name]


def require_models(profile: Profile, name: str, source: str) -> None:
    """Serving a profile without models would answer every request with 404: refuse to start instead."""
    if not profile.models:
        problem = f"profile {name!r} has no models: add at least one under profiles.{name}.models"
        raise ConfigError(source, [(f"profiles.{name}.models", problem)])
