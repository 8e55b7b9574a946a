"""Write the tiny model as a Hugging Face checkpoint directory (config, safetensors, tokenizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from backends.tiny_model.tokenizer_files import (
    HARMONY_CALL,
    HARMONY_RETURN,
    TinyTokenizer,
    dumps,
    tokenizer_config_json,
    tokenizer_json,
)
from backends.tiny_model.weights import TinyShapes

_HARMONY_EOS = (HARMONY_RETURN, HARMONY_CALL)
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def config_json(shapes: TinyShapes, tok: TinyTokenizer, arch: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": shapes.vocab_size,
        "hidden_size": shapes.hidden_size,
        "intermediate_size": shapes.intermediate_size,
        "num_hidden_layers": shapes.num_hidden_layers,
        "num_attention_heads": shapes.num_attention_heads,
        "num_key_value_heads": shapes.num_key_value_heads,
        "head_dim": shapes.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shapes.max_position_embeddings,
        "rms_norm_eps": shapes.rms_norm_eps,
        "rope_theta": shapes.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": tok.endoftext_id,
        "eos_token_id": tok.im_end_id,
        "pad_token_id": tok.endoftext_id,
        "torch_dtype": "float32",
    }
    if arch == "llama":
        cfg |= {"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1}
    else:
        layers = shapes.num_hidden_layers
        cfg |= {"use_sliding_window": False, "sliding_window": None, "max_window_layers": layers}
    return cfg


def generation_config_json(tok: TinyTokenizer) -> dict[str, Any]:
    return {
        "bos_token_id": tok.endoftext_id,
        # gpt-oss ends a turn on <|return|> and on <|call|> (its generation_config.json lists both)
        "eos_token_id": [
            tok.im_end_id,
            tok.endoftext_id,
            *(tok.token_id(t) for t in _HARMONY_EOS if t in tok.tokens),
        ],
        "pad_token_id": tok.endoftext_id,
        "do_sample": False,
    }


def write_hf_dir(
    hf_dir: Path, shapes: TinyShapes, tok: TinyTokenizer, arch: str, weights: dict[str, np.ndarray]
) -> None:
    """Write every file of the checkpoint into ``hf_dir`` (which must exist and be private to us)."""
    save_file(weights, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    (hf_dir / "model.safetensors").chmod(0o644)  # safetensors creates it owner-only
    files = {
        "config.json": config_json(shapes, tok, arch),
        "generation_config.json": generation_config_json(tok),
        "tokenizer.json": tokenizer_json(tok, arch),
        "tokenizer_config.json": tokenizer_config_json(tok, arch),
        "special_tokens_map.json": {
            "additional_special_tokens": [tok.tokens[tok.im_start_id], tok.tokens[tok.im_end_id]],
            "eos_token": tok.tokens[tok.im_end_id],
            "pad_token": tok.tokens[tok.endoftext_id],
        },
    }
    for name, doc in files.items():
        (hf_dir / name).write_bytes(dumps(doc))
