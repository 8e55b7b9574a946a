"""Shapes and deterministic random weights of the tiny model (numpy only, HF tensor names/layout).

Scales (std of a normal draw) are chosen so that the random network behaves "decisively" rather
than like the usual near-uniform 0.02-std init; see the package docstring for why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.tiny_model.tokenizer_files import TinyTokenizer

ARCHS: tuple[str, ...] = ("llama", "qwen2")


@dataclass(frozen=True, slots=True)
class TinyShapes:
    vocab_size: int
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 160
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# std of each weight family (see the package docstring for the reasoning)
EMBED_STD = 1.0
NORM_JITTER = 0.1  # norm weights are 1 + N(0, jitter): non-trivial, but never near zero
QK_STD = 0.15  # position- and content-dependent attention, so the context matters
QKV_BIAS_STD = 0.2  # qwen2 only
VO_STD = 0.08  # attention adds a modest part of the residual: less exposure to llama.cpp's F16 KV cache
MLP_IN_STD = 0.15
MLP_OUT_STD = 0.12
LM_HEAD_STD = 0.6  # logit std ~ 0.6 * sqrt(hidden): top-1 margins of several logits
ANTI_REPEAT = 0.3  # lm_head -= this * (LM_HEAD_STD / EMBED_STD) * embed_tokens: no token -> same token loops
SPECIAL_ROW_SCALE = 0.3  # lm_head rows of special tokens (EOS included): rarely predicted
PARTIAL_ROW_SCALE = 0.5  # rows of tokens that are not complete UTF-8 text (lone bytes, cut chars)


def _unlikely_rows(tok: TinyTokenizer) -> tuple[list[int], list[int]]:
    """(special token ids, ids of normal tokens whose bytes are not valid standalone text)."""
    from backends.tiny_model.bpe import bytes_to_unicode

    inverse = {c: b for b, c in bytes_to_unicode().items()}
    partial: list[int] = []
    for i in range(tok.num_normal):
        raw = bytes(inverse[c] for c in tok.tokens[i])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            partial.append(i)
            continue
        if any(ord(c) < 32 and c not in "\n\t" for c in text) or "\x7f" in text:
            partial.append(i)
    return list(tok.special_ids), partial


def make_weights(shapes: TinyShapes, tok: TinyTokenizer, arch: str, seed: int) -> dict[str, np.ndarray]:
    """All tensors, float32, HF names and [out, in] layout. Same seed -> same values on any machine."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    rng = np.random.Generator(np.random.PCG64(seed))
    h, inter = shapes.hidden_size, shapes.intermediate_size
    q_out = shapes.num_attention_heads * shapes.head_dim
    kv_out = shapes.num_key_value_heads * shapes.head_dim

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def norm_weight() -> np.ndarray:
        return (np.float32(1.0) + normal((h,), NORM_JITTER)).astype(np.float32)

    out: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal((shapes.vocab_size, h), EMBED_STD)}
    for layer in range(shapes.num_hidden_layers):
        p = f"model.layers.{layer}."
        out[p + "input_layernorm.weight"] = norm_weight()
        out[p + "self_attn.q_proj.weight"] = normal((q_out, h), QK_STD)
        out[p + "self_attn.k_proj.weight"] = normal((kv_out, h), QK_STD)
        out[p + "self_attn.v_proj.weight"] = normal((kv_out, h), VO_STD)
        out[p + "self_attn.o_proj.weight"] = normal((h, q_out), VO_STD)
        out[p + "post_attention_layernorm.weight"] = norm_weight()
        out[p + "mlp.gate_proj.weight"] = normal((inter, h), MLP_IN_STD)
        out[p + "mlp.up_proj.weight"] = normal((inter, h), MLP_IN_STD)
        out[p + "mlp.down_proj.weight"] = normal((h, inter), MLP_OUT_STD)
    out["model.norm.weight"] = norm_weight()
    lm_head = normal((shapes.vocab_size, h), LM_HEAD_STD)
    lm_head -= np.float32(ANTI_REPEAT * LM_HEAD_STD / EMBED_STD) * out["model.embed_tokens.weight"]
    special, partial = _unlikely_rows(tok)
    lm_head[special] *= np.float32(SPECIAL_ROW_SCALE)
    lm_head[partial] *= np.float32(PARTIAL_ROW_SCALE)
    out["lm_head.weight"] = lm_head
    if arch == "qwen2":  # drawn last so both archs share every other tensor for a given seed
        for layer in range(shapes.num_hidden_layers):
            p = f"model.layers.{layer}.self_attn."
            out[p + "q_proj.bias"] = normal((q_out,), QKV_BIAS_STD)
            out[p + "k_proj.bias"] = normal((kv_out,), QKV_BIAS_STD)
            out[p + "v_proj.bias"] = normal((kv_out,), QKV_BIAS_STD)
    return out
