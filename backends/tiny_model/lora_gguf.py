"""Write a LoRA adapter as llama.cpp's GGUF LoRA, exactly as its convert_lora_to_gguf.py does.

What llama.cpp's loader (src/llama-adapter.cpp) requires: ``general.type = adapter``,
``general.architecture`` equal to the base model's, ``adapter.type = lora``, ``adapter.lora.alpha``, and
per adapted weight ``W`` a pair ``<W's GGUF name>.lora_a`` / ``.lora_b``. In ggml's order a weight is
``ne = [in, out]``; lora_a must be ``[in, r]`` and lora_b ``[r, out]``, i.e. numpy ``[r, in]`` and
``[out, r]``: PEFT's own lora_A / lora_B layouts, unchanged. llama.cpp scales ``B @ A`` by
``scale * alpha / r`` with r read from lora_b, which is PEFT's alpha / r; rsLoRA's alpha / sqrt(r) is
written as the alpha that gives that same product (alpha * sqrt(r)).

The llama arch's q/k weights are stored with their rows permuted for llama.cpp's rope
(``permute_for_llama_rope``); the converter permutes lora_b's rows (the output side) the same way, and
so do we. qwen2 (NEOX rope) keeps HF's order.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np

from backends.tiny_model.gguf_format import gguf_tensor_name, permute_for_llama_rope
from backends.tiny_model.weights import TinyShapes

if TYPE_CHECKING:
    from backends.tiny_model.lora import TinyLora


def gguf_alpha(lora: TinyLora) -> float:
    """The alpha llama.cpp needs for PEFT's scaling (alpha / r, or alpha / sqrt(r) under rsLoRA)."""
    return lora.alpha * math.sqrt(lora.rank) if lora.use_rslora else lora.alpha


def write_lora_gguf(
    path: Path, shapes: TinyShapes, lora: TinyLora, pairs: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    writer = gguf.GGUFWriter(str(path), lora.arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, gguf_alpha(lora))
    writer.add_name(f"tandem-tiny-{lora.arch}-lora-r{lora.rank}-s{lora.seed}")
    for module, (a, b) in pairs.items():
        if lora.arch == "llama" and module.endswith("q_proj"):
            b = permute_for_llama_rope(b, shapes.num_attention_heads)
        elif lora.arch == "llama" and module.endswith("k_proj"):
            b = permute_for_llama_rope(b, shapes.num_key_value_heads)
        name = gguf_tensor_name(module + ".weight")
        writer.add_tensor(name + ".lora_a", np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(name + ".lora_b", np.ascontiguousarray(b, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
