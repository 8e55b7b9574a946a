"""Write the tiny model as a single F32 GGUF file (weights + tokenizer + chat template).

Mirrors what llama.cpp's ``convert_hf_to_gguf.py`` produces for a Llama / Qwen2 checkpoint with a
GPT-2 style BPE tokenizer, using only the ``gguf`` package.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from backends.tiny_model.tokenizer_files import CHAT_TEMPLATE, GGUF_PRE_TOKENIZER, TinyTokenizer
from backends.tiny_model.weights import TinyShapes

_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def permute_for_llama_rope(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k row order -> llama.cpp's interleaved-pair order (as convert_hf_to_gguf).

    Only the ``llama`` arch needs it: llama.cpp runs it with "normal" (GPT-J style) rope, while
    ``qwen2`` uses NEOX rope, which matches HF's layout as-is.
    """
    rows = weight.shape[0]
    return np.ascontiguousarray(
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def gguf_tensor_name(hf_name: str) -> str:
    if hf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)  # model.layers.{i}.<rest>
    return f"blk.{int(layer)}.{_LAYER_TENSORS[rest]}"


def gguf_tensors(shapes: TinyShapes, arch: str, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, value in weights.items():
        if arch == "llama" and name.endswith("q_proj.weight"):
            value = permute_for_llama_rope(value, shapes.num_attention_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            value = permute_for_llama_rope(value, shapes.num_key_value_heads)
        out[gguf_tensor_name(name)] = value.astype(np.float32, copy=False)
    return out


def write_gguf(
    path: Path, shapes: TinyShapes, tok: TinyTokenizer, arch: str, weights: dict[str, np.ndarray], name: str
) -> None:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(shapes.vocab_size)
    writer.add_context_length(shapes.max_position_embeddings)
    writer.add_embedding_length(shapes.hidden_size)
    writer.add_block_count(shapes.num_hidden_layers)
    writer.add_feed_forward_length(shapes.intermediate_size)
    writer.add_head_count(shapes.num_attention_heads)
    writer.add_head_count_kv(shapes.num_key_value_heads)
    writer.add_rope_dimension_count(shapes.head_dim)
    writer.add_rope_freq_base(shapes.rope_theta)
    writer.add_layer_norm_rms_eps(shapes.rms_norm_eps)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(GGUF_PRE_TOKENIZER[arch])
    writer.add_token_list(list(tok.tokens))
    token_types = [int(gguf.TokenType.NORMAL)] * tok.num_normal
    token_types += [int(gguf.TokenType.CONTROL)] * (tok.vocab_size - tok.num_normal)
    writer.add_token_types(token_types)
    writer.add_token_merges([f"{a} {b}" for a, b in tok.merges])
    writer.add_bos_token_id(tok.endoftext_id)
    writer.add_eos_token_id(tok.im_end_id)
    writer.add_pad_token_id(tok.endoftext_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    for tensor_name, value in gguf_tensors(shapes, arch, weights).items():
        writer.add_tensor(tensor_name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
