"""The paged engine over one GGUF file: weights dequantized at load (loader.load_gguf), the tokenizer and
chat template from the file's own vocabulary (gguf_tokenizer), so the file llama.cpp serves in dev serves
prod as it is."""

from __future__ import annotations

from pathlib import Path

from backends.paged.config import EngineConfig
from backends.paged.engine import LLMEngine
from backends.paged.loader import load_gguf
from backends.paged.model_runner import resolve_device, resolve_dtype


def engine_from_gguf(path: Path, config: EngineConfig, model_name: str = "model") -> LLMEngine:
    from backends.paged.gguf_tokenizer import tokenizer_from_gguf

    device = resolve_device(config.device)
    model = load_gguf(path, resolve_dtype(config.dtype, device), device)
    tokenizer = tokenizer_from_gguf(path, model.config.vocab_size)
    eos_ids = tuple(dict.fromkeys((*tokenizer.eos_ids, *model.config.eos_token_ids)))
    return LLMEngine(model, config, eos_ids, tokenizer, model_name)
