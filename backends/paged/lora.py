"""LoRA adapters on the paged engine: loading PEFT checkpoints, and the registry requests name them from.

The API the gateway calls (PagedBackend; each method is safe from any thread):

    backend.add_adapter(name: str, path: Path, scale: float = 1.0) -> None
        Load a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors) and serve it as `name`.
        Blocking (reads and checks the files): call it in a worker thread. Raises an AdapterError subclass:
        AdapterLoadError (files missing or unreadable, not a LoRA, features the engine lacks: DoRA,
        modules_to_save, bias, rank/alpha patterns), AdapterRankError (rank > engine.max_lora_rank),
        AdapterMismatchError (a target module the base lacks or cannot adapt, a shape that is not the
        base's), LoraDisabledError (engine.max_loras is 0), AdapterExistsError (the name is taken).
    backend.remove_adapter(name: str) -> None
        Stop serving it; UnknownAdapterError if it is not loaded. Requests already running on it finish
        with it; new requests naming it are refused.
    backend.adapters() -> list[str]
        The loaded adapters' names, in load order.
    GenerationRequest(..., adapter=name) runs a request on an adapter (None: the base model); an unknown
    name is refused at generate() with RequestRejectedError.

Engine side: EngineConfig.max_loras device slots (0: LoRA off), each holding up to max_lora_rank, reserved
before the KV pool is sized; any number of adapters may be loaded (host memory) and swap into the slots
least recently used first (lora_slots.py). One batch mixes the base and up to max_loras adapters
(kernels.add_lora). The prefix cache salts each adapter's block hashes, so no KV is shared across them.
Targets: q/k/v/o/gate/up/down_proj, written into the engine's fused q/k/v and gate/up layouts; scaling
lora_alpha / r (rsLoRA: lora_alpha / sqrt(r)) times `scale`. A GGUF base works like a safetensors one (the
same parameter layout after loading); GGUF LoRA files are for the llama.cpp backend only.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from backends.base import BackendError
from backends.paged.layers import ShardedLinear
from backends.paged.model import FUSED_SHARDS, CausalLM

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


class AdapterError(BackendError, ValueError):
    """An adapter cannot be loaded, or named, as asked."""


class AdapterLoadError(AdapterError):
    pass


class AdapterRankError(AdapterError):
    pass


class AdapterMismatchError(AdapterError):
    pass


class LoraDisabledError(AdapterError):
    pass


class AdapterExistsError(AdapterError):
    pass


class UnknownAdapterError(AdapterError):
    pass


@dataclass(frozen=True, slots=True)
class LoraWeights:
    """One target module's factors, ready for a slot: A [r, in], B [out of the shard, r] times the scaling."""

    a: torch.Tensor
    b: torch.Tensor


@dataclass(frozen=True, slots=True, eq=False)
class LoraAdapter:
    """A loaded adapter (host memory). `uid` is unique per load, so a name re-added with other weights
    never meets the old one's slot or cached KV."""

    name: str
    uid: int
    path: Path
    rank: int
    scaling: float
    # (the engine's module name, e.g. model.layers.0.self_attn.qkv_proj; its shard: q/k/v, gate/up or None)
    weights: dict[tuple[str, str | None], LoraWeights] = field(repr=False)

    @property
    def cache_salt(self) -> bytes:
        return f"lora/{self.uid}".encode()


def _config(path: Path, name: str) -> dict[str, Any]:
    file = path / "adapter_config.json"
    if not file.is_file():
        raise AdapterLoadError(f"adapter {name!r}: {file} not found (a PEFT LoRA directory has it)")
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterLoadError(f"adapter {name!r}: cannot read {file}: {exc}") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type", "LORA") != "LORA":
        kind = cfg.get("peft_type") if isinstance(cfg, dict) else type(cfg).__name__
        raise AdapterLoadError(f"adapter {name!r}: peft_type {kind!r} is not a LoRA adapter")
    unsupported = {
        "use_dora": cfg.get("use_dora"),
        "modules_to_save": cfg.get("modules_to_save"),
        "rank_pattern": cfg.get("rank_pattern"),
        "alpha_pattern": cfg.get("alpha_pattern"),
        "fan_in_fan_out": cfg.get("fan_in_fan_out"),
        "lora_bias": cfg.get("lora_bias"),
        "layer_replication": cfg.get("layer_replication"),
        "target_parameters": cfg.get("target_parameters"),
        "trainable_token_indices": cfg.get("trainable_token_indices"),
        "alora_invocation_tokens": cfg.get("alora_invocation_tokens"),
    }
    for key, value in unsupported.items():
        if value:
            raise AdapterLoadError(f"adapter {name!r}: {key}={value!r} is not supported by the paged engine")
    if cfg.get("bias", "none") != "none":
        raise AdapterLoadError(f"adapter {name!r}: bias={cfg['bias']!r} is not supported (only 'none')")
    targets = cfg.get("target_modules")
    if isinstance(targets, list):  # a regex string or "all-linear" is checked against the tensors instead
        for target in targets:
            if str(target).rsplit(".", 1)[-1] not in TARGETS:
                raise AdapterMismatchError(
                    f"adapter {name!r}: target module {target!r} is not supported "
                    f"(the paged engine adapts {', '.join(TARGETS)})"
                )
    if not isinstance(cfg.get("r"), int) or cfg["r"] < 1:
        raise AdapterLoadError(
            f"adapter {name!r}: adapter_config.json has no valid rank r ({cfg.get('r')!r})"
        )
    return cfg


def _tensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    file = path / "adapter_model.safetensors"
    if not file.is_file():
        hint = (
            " (adapter_model.bin is not read: convert it to safetensors)"
            if (path / "adapter_model.bin").exists()
            else ""
        )
        raise AdapterLoadError(f"adapter {name!r}: {file} not found{hint}")
    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except Exception as exc:  # a truncated or foreign file: safetensors raises several kinds
        raise AdapterLoadError(f"adapter {name!r}: cannot read {file}: {exc}") from None


def _target(model: CausalLM, module: str, name: str) -> tuple[str, str | None, ShardedLinear]:
    """The engine's (fused) module and shard for a checkpoint module name (model.layers.0.mlp.up_proj)."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf not in TARGETS:
        raise AdapterMismatchError(
            f"adapter {name!r} adapts {module!r}, which the paged engine cannot "
            f"(it adapts {', '.join(TARGETS)})"
        )
    fused, shard = module, None
    for fragment, (replacement, shard_name) in FUSED_SHARDS.items():
        if fragment in module + ".":
            fused, shard = (module + ".").replace(fragment, replacement)[:-1], shard_name
            break
    try:
        linear = model.get_submodule(fused)
    except AttributeError:
        linear = None
    if not isinstance(linear, ShardedLinear) or shard not in linear.offsets:
        raise AdapterMismatchError(
            f"adapter {name!r} targets {module!r}, which the base model does not have "
            f"({model.config.num_layers} layers): was it trained for another base model?"
        )
    return fused, shard, linear


def load_peft_adapter(
    path: Path, name: str, uid: int, model: CausalLM, max_rank: int, scale: float = 1.0
) -> LoraAdapter:
    """Read and check a PEFT LoRA directory against the base model; factors in the model's dtype, on CPU."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise AdapterLoadError(f"adapter {name!r}: {path} is not a directory (a PEFT LoRA directory)")
    if not math.isfinite(scale):
        raise AdapterLoadError(f"adapter {name!r}: scale must be a finite number, not {scale}")
    cfg = _config(path, name)
    rank = int(cfg["r"])
    if rank > max_rank:
        raise AdapterRankError(
            f"adapter {name!r} has rank {rank}, above this engine's max_lora_rank {max_rank} "
            "(raise engine.max_lora_rank)"
        )
    alpha = float(cfg.get("lora_alpha", 8))
    scaling = alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in _tensors(path, name).items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterLoadError(
                f"adapter {name!r}: tensor {key!r} is not a LoRA A/B weight the engine reads"
            )
        factors.setdefault(match["module"], {})[match["ab"]] = tensor
    if not factors:
        raise AdapterLoadError(f"adapter {name!r}: adapter_model.safetensors holds no LoRA weights")
    dtype = next(model.parameters()).dtype
    weights: dict[tuple[str, str | None], LoraWeights] = {}
    for module, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            raise AdapterLoadError(f"adapter {name!r}: {module!r} lacks lora_{'B' if 'A' in pair else 'A'}")
        fused, shard, linear = _target(model, module, name)
        out = linear.offsets[shard][1]
        expected = {"A": (rank, linear.weight.shape[1]), "B": (out, rank)}
        for ab in ("A", "B"):
            if tuple(pair[ab].shape) != expected[ab]:
                raise AdapterMismatchError(
                    f"adapter {name!r}: {module}.lora_{ab} has shape {tuple(pair[ab].shape)}, the base model "
                    f"needs {expected[ab]} for rank {rank}: was it trained for another base model?"
                )
        b = (pair["B"].float() * (scaling * scale)).to(dtype)
        weights[(fused, shard)] = LoraWeights(pair["A"].to(dtype).contiguous(), b.contiguous())
    return LoraAdapter(name, uid, path, rank, scaling * scale, weights)


class AdapterRegistry:
    """The loaded adapters by name. Any thread may add, remove or look up (one lock); the engine thread
    resolves a request's adapter once, at admission, and the sequence keeps that object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._adapters: dict[str, LoraAdapter] = {}
        self._next_uid = 1

    def new_uid(self) -> int:
        with self._lock:
            uid, self._next_uid = self._next_uid, self._next_uid + 1
            return uid

    def add(self, adapter: LoraAdapter) -> None:
        with self._lock:
            if adapter.name in self._adapters:
                raise AdapterExistsError(f"an adapter named {adapter.name!r} is already loaded")
            self._adapters[adapter.name] = adapter

    def remove(self, name: str) -> None:
        with self._lock:
            if self._adapters.pop(name, None) is None:
                raise UnknownAdapterError(f"no adapter named {name!r} is loaded")

    def get(self, name: str) -> LoraAdapter | None:
        with self._lock:
            return self._adapters.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._adapters)
