"""A GGUF file's metadata as the engine's ModelConfig, in llama.cpp's key names; no weights are read.

Only what the engine computes exactly is accepted; anything else (another architecture, mixture of
experts, partial rotary, per-layer head counts, YaRN) is refused here, naming it, so a file fails at load
instead of serving wrong logits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from backends.paged.gguf_file import GGUFFile, GGUFTensor
from backends.paged.model_config import ModelConfig, RopeConfig, UnsupportedModelError

# GGUF architectures the engine runs: llama (Llama 2/3, Mistral, SmolLM2: llama.cpp's converter writes
# them all as "llama", with q/k rows permuted) and qwen2 (q/k/v biases, rows as in Hugging Face).
GGUF_ARCHS = ("llama", "qwen2")


def open_gguf(path: Path) -> GGUFFile:
    return GGUFFile(path)  # memory-mapped: tensors are read only when touched


class GGUFMetadata:
    """The key/value section with `{arch}` substituted in keys."""

    def __init__(self, file: GGUFFile) -> None:
        self._fields = file.fields
        self.arch = str(file.get("general.architecture", ""))

    def get(self, key: str, default: Any = None) -> Any:
        return self._fields.get(key.format(arch=self.arch), default)

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise UnsupportedModelError(f"the GGUF file lacks {key.format(arch=self.arch)!r}")
        return value


def _f32(value: float) -> float:
    """GGUF stores floats as float32: 1e-5 reads as 9.99999974e-06. Take the shortest decimal that is
    the same float32, which is what the converter was given."""
    return float(str(np.float32(value)))


def _one_count(meta: GGUFMetadata, key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if value is None:
        raise UnsupportedModelError(f"the GGUF file lacks {key.format(arch=meta.arch)!r}")
    if isinstance(value, list):  # per-layer counts (OpenELM-style): fine only when all are equal
        if len(set(value)) != 1:
            raise UnsupportedModelError(f"{key.format(arch=meta.arch)} differs between layers: not supported")
        value = value[0]
    return int(value)


def model_config_from_gguf(file: GGUFFile) -> ModelConfig:
    meta = GGUFMetadata(file)
    arch = meta.arch
    if arch not in GGUF_ARCHS:
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported by the paged engine (supported: {GGUF_ARCHS})"
        )
    if int(meta.get("split.count", 1)) > 1:
        raise UnsupportedModelError(
            f"this GGUF file is one of {meta.get('split.count')} splits: merge them first "
            "(llama-gguf-split --merge FIRST_SPLIT OUT.gguf)"
        )
    if int(meta.get("{arch}.expert_count", 0) or 0) > 0:
        raise UnsupportedModelError(f"mixture-of-experts {arch!r} models are not supported")
    tensors = {t.name: t for t in file.tensors}
    if "token_embd.weight" not in tensors:
        raise UnsupportedModelError("the GGUF file has no token_embd.weight tensor")
    hidden = int(meta.require("{arch}.embedding_length"))
    heads = _one_count(meta, "{arch}.attention.head_count")
    kv_heads = _one_count(meta, "{arch}.attention.head_count_kv", heads)
    head_dim = int(meta.get("{arch}.attention.key_length", hidden // heads))
    if int(meta.get("{arch}.attention.value_length", head_dim)) != head_dim:
        raise UnsupportedModelError("attention.value_length differing from key_length is not supported")
    if int(meta.get("{arch}.rope.dimension_count", head_dim)) != head_dim:
        raise UnsupportedModelError(
            "partial rotary embeddings (rope.dimension_count < head size) are not supported"
        )
    if meta.get("{arch}.attention.sliding_window") is not None:
        raise UnsupportedModelError("sliding-window attention is not supported for GGUF files")
    vocab = int(tensors["token_embd.weight"].shape[-1])  # ne1: the number of embedding rows
    eos = [meta.get(f"tokenizer.ggml.{name}_token_id") for name in ("eos", "eot", "eom")]
    context = int(meta.require("{arch}.context_length"))
    return ModelConfig(
        arch=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=_one_count(meta, "{arch}.feed_forward_length"),
        num_layers=int(meta.require("{arch}.block_count")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=_f32(meta.require("{arch}.attention.layer_norm_rms_epsilon")),
        rope=_rope(meta, tensors, head_dim),
        max_position_embeddings=context,
        tie_word_embeddings="output.weight" not in tensors,
        qkv_bias="blk.0.attn_q.bias" in tensors,
        o_bias="blk.0.attn_output.bias" in tensors,
        checkpoint_dtype=None,
        eos_token_ids=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
    )


def _rope(meta: GGUFMetadata, tensors: dict[str, GGUFTensor], head_dim: int) -> RopeConfig:
    theta = _f32(meta.get("{arch}.rope.freq_base", 10000.0))
    kind = str(meta.get("{arch}.rope.scaling.type", "none"))
    if "rope_freqs.weight" in tensors:  # how the converter writes Llama 3.1's rope scaling
        if kind not in ("none", "linear") or float(meta.get("{arch}.rope.scaling.factor", 1.0)) != 1.0:
            raise UnsupportedModelError(f"rope_freqs.weight together with rope scaling {kind!r}")
        freqs = tensors["rope_freqs.weight"]
        if freqs.type.name != "F32":
            raise UnsupportedModelError(f"rope_freqs.weight of type {freqs.type.name} (expected F32)")
        factors = freqs.data.view(np.float32).astype(np.float64).reshape(-1)
        return _llama3_rope(theta, head_dim, factors)
    if kind == "none":
        return RopeConfig(theta=theta)
    if kind == "linear":
        factor = _f32(meta.require("{arch}.rope.scaling.factor"))
        return (
            RopeConfig(theta=theta)
            if factor == 1.0
            else RopeConfig(theta=theta, type="linear", factor=factor)
        )
    raise UnsupportedModelError(f"rope scaling {kind!r} is not supported (supported: none, linear, llama3)")


def llama3_freq_factors(theta: float, head_dim: int, rope: RopeConfig) -> np.ndarray:
    """What convert_hf_to_gguf.py writes as rope_freqs.weight for Llama 3.1-style scaling."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
    high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
    out = []
    for freq in freqs.astype(np.float64):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(rope.factor)
        else:
            smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
                rope.high_freq_factor - rope.low_freq_factor
            )
            out.append(1.0 / ((1 - smooth) / rope.factor + smooth))
    return np.asarray(out)


def _llama3_rope(theta: float, head_dim: int, factors: np.ndarray) -> RopeConfig:
    """Recover Llama 3.1's scaling parameters from the per-frequency factors; refuse factors that no
    known parameter set produces (the engine computes its rope table from parameters, not factors)."""
    if factors.shape != (head_dim // 2,):
        raise UnsupportedModelError(f"rope_freqs.weight has {factors.size} entries, expected {head_dim // 2}")
    if np.all(factors == 1.0):
        return RopeConfig(theta=theta)
    for original in (8192, 4096, 16384, 32768, 131072):
        for low, high in ((1.0, 4.0), (1.0, 2.0), (1.0, 8.0)):
            rope = RopeConfig(theta, "llama3", float(factors.max()), low, high, original)
            if np.allclose(llama3_freq_factors(theta, head_dim, rope), factors, rtol=1e-4, atol=1e-6):
                return rope
    raise UnsupportedModelError(
        "rope_freqs.weight holds per-frequency rope factors other than Llama 3.1-style scaling: not supported"
    )
