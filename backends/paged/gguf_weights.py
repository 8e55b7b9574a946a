"""A GGUF file's tensors as the engine's weights: dequantized, renamed to Hugging Face's names, and with
llama.cpp's q/k row permutation undone, so CausalLM.load_weight fuses them like a safetensors checkpoint.

Dequantization is the `gguf` package's (numpy, float32 out); the engine then holds dense weights in its
own dtype. A file with a tensor type outside SUPPORTED_TYPES is refused before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from backends.paged.gguf_file import GGUFFile, GGUFTensor
from backends.paged.model_config import ModelConfig, UnsupportedModelError

# Tensor types this loader dequantizes (and the tests check against quantized data). gguf has more
# dequantizers (IQ*, TQ*), untested here, so they are refused rather than trusted.
SUPPORTED_TYPES = frozenset(
    ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
)

_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Read into the config (gguf_config), not weights.
_CONFIG_TENSORS = frozenset(["rope_freqs.weight"])


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor; None for tensors the config already consumed."""
    if gguf_name in _CONFIG_TENSORS:
        return None
    if gguf_name in _GLOBAL:
        return _GLOBAL[gguf_name]
    block, _, rest = gguf_name.partition(".")
    layer, _, part = rest.partition(".")
    if block == "blk" and layer.isdigit() and part in _LAYER:
        return f"model.layers.{int(layer)}.{_LAYER[part]}"
    raise UnsupportedModelError(f"GGUF tensor {gguf_name!r} has no place in the engine's model")


def unpermute_rope_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf.py's `permute` of llama q/k rows (weights and biases).

    llama.cpp applies rope to adjacent pairs (GPT-J style), so its converter reorders each head's rows
    from Hugging Face's rotate-half layout [x0..x(d/2-1), y0..] into pairs [x0, y0, x1, y1, ...]. The
    engine uses rotate-half, so each head's rows go back: pairs -> halves.
    """
    rows = weight.shape[0]
    return np.ascontiguousarray(
        weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def check_tensor_types(file: GGUFFile) -> None:
    unsupported: dict[str, list[str]] = {}
    for tensor in file.tensors:
        if tensor.type.name not in SUPPORTED_TYPES:
            unsupported.setdefault(tensor.type.name, []).append(tensor.name)
    if unsupported:
        kinds = ", ".join(
            f"{kind} ({len(names)} tensors, e.g. {names[0]})" for kind, names in unsupported.items()
        )
        raise UnsupportedModelError(
            f"GGUF tensor type {kinds} is not supported by the paged engine "
            f"(supported: {', '.join(sorted(SUPPORTED_TYPES))})"
        )


def dequantize(tensor: GGUFTensor) -> np.ndarray:
    """float32 in Hugging Face's [out, in] order (GGUF's shape lists the fastest dimension first)."""
    from gguf.quants import dequantize as gguf_dequantize

    kind = tensor.type.name
    if kind == "F32":
        values = tensor.data.view(np.float32).copy()  # a copy: the data is the read-only memory map
    elif kind == "F16":
        values = tensor.data.view(np.float16).astype(np.float32)
    else:
        values = gguf_dequantize(tensor.data, tensor.type)
    shape = tensor.rows_shape
    if values.size != int(np.prod(shape)):
        raise ValueError(f"GGUF tensor {tensor.name!r}: {values.size} values for shape {shape}")
    return values.reshape(shape)


def gguf_weights(file: GGUFFile, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(Hugging Face name, float32 array) for every weight tensor of the file, one at a time."""
    check_tensor_types(file)
    permuted = cfg.arch == "llama"  # qwen2 runs NEOX-style rope in llama.cpp: rows are left as they are
    for tensor in file.tensors:
        name = hf_name(tensor.name)
        if name is None:
            continue
        values = dequantize(tensor)
        if permuted and ".q_proj." in name:
            values = unpermute_rope_rows(values, cfg.num_heads)
        elif permuted and ".k_proj." in name:
            values = unpermute_rope_rows(values, cfg.num_kv_heads)
        yield name, values
