"""The shape of a Llama-family decoder, read from a checkpoint's config.json or from a named preset."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_ARCHS = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE = ("default", "linear", "llama3")


class UnsupportedModelError(ValueError):
    """The checkpoint uses something this engine does not implement."""


@dataclass(frozen=True, slots=True)
class RopeConfig:
    theta: float = 10000.0
    type: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only


@dataclass(frozen=True, slots=True)
class ModelConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    sliding_window: int | None = None  # None: full attention
    checkpoint_dtype: str | None = None  # "bfloat16", ... as the checkpoint declares it
    eos_token_ids: tuple[int, ...] = ()

    @property
    def max_model_len(self) -> int:
        """Longest context this engine computes exactly: a sliding window caps it (inside the window,
        sliding and full attention agree)."""
        if self.sliding_window is not None:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @classmethod
    def from_dir(cls, path: Path) -> ModelConfig:
        return cls.from_hf(json.loads((path / "config.json").read_text()))

    @classmethod
    def from_gguf(cls, path: Path) -> ModelConfig:
        """From a GGUF file's metadata (see gguf_config; reads no weights)."""
        from backends.paged.gguf_config import model_config_from_gguf, open_gguf

        return model_config_from_gguf(open_gguf(path))

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        arch = cfg.get("model_type", "")
        quantization = cfg.get("quantization_config")
        if quantization is not None:
            # The engine holds plain dense weights: a quantized checkpoint has no `weight` tensors to load.
            method = (
                quantization.get("quant_method", "unknown") if isinstance(quantization, dict) else "unknown"
            )
            raise UnsupportedModelError(
                f"quantized checkpoint (quantization_config.quant_method {method!r}) is not supported by the "
                "paged engine: use the unquantized checkpoint, or a GGUF file (dequantized at load)"
            )
        if arch not in SUPPORTED_ARCHS:
            raise UnsupportedModelError(
                f"model_type {arch!r} is not supported (supported: {SUPPORTED_ARCHS})"
            )
        if cfg.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act {cfg['hidden_act']!r} is not supported (only silu)")
        if cfg.get("mlp_bias"):
            raise UnsupportedModelError("mlp_bias is not supported")
        heads = cfg["num_attention_heads"]
        sliding = cfg.get("sliding_window")
        if arch == "qwen2" and not cfg.get("use_sliding_window", False):
            sliding = None
        eos = cfg.get("eos_token_id")
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(
            arch=arch,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope=_rope_config(cfg),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=arch == "qwen2" or attention_bias,
            o_bias=attention_bias,
            sliding_window=sliding,
            checkpoint_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
            eos_token_ids=tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,)),
        )

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r} (known: {sorted(PRESETS)})") from None


def _rope_config(cfg: dict[str, Any]) -> RopeConfig:
    # transformers v5 writes rope_parameters (theta included); v4 wrote rope_theta + rope_scaling.
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in SUPPORTED_ROPE:
        raise UnsupportedModelError(f"rope scaling {kind!r} is not supported (supported: {SUPPORTED_ROPE})")
    if float(params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))) != 1.0:
        raise UnsupportedModelError("partial_rotary_factor other than 1.0 is not supported")
    if kind == "default":
        return RopeConfig(theta=theta)
    return RopeConfig(
        theta=theta,
        type=kind,
        factor=float(params["factor"]),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        arch="llama",
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=256,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        rms_norm_eps=1e-5,
        rope=RopeConfig(theta=10000.0),
        max_position_embeddings=4096,
        eos_token_ids=(2,),
    ),
    "llama-3-8b": ModelConfig(
        arch="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rms_norm_eps=1e-5,
        rope=RopeConfig(theta=500000.0),
        max_position_embeddings=8192,
        eos_token_ids=(128001, 128009),
    ),
}
