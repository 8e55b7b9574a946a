"""What a model is, read from its files without loading it (for listings of models that are not loaded)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from backends.base import ModelInfo

# general.file_type of GGUF (llama.cpp's llama_ftype), the common ones
GGUF_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
                   11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
                   17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}  # fmt: skip
SAFETENSORS_DTYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16", "F8_E4M3": "FP8"}


def inspect_gguf(path: Path) -> ModelInfo:
    from backends.paged.gguf_file import GGUFFile  # header and tensor table only: milliseconds

    file = GGUFFile(path)
    template = file.get("tokenizer.chat_template")
    return ModelInfo(
        format="gguf",
        family=str(file.get("general.architecture", "unknown")),
        parameter_count=sum(math.prod(t.shape) for t in file.tensors),
        quantization=GGUF_FILE_TYPES.get(int(file.get("general.file_type", -1)), "unknown"),
        size_bytes=path.stat().st_size,
        chat_template=template if isinstance(template, str) else None,
    )


def _safetensors_header(path: Path) -> dict:
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        return json.loads(file.read(length))


def inspect_checkpoint(directory: Path) -> ModelInfo:
    """A Hugging Face checkpoint directory: config.json, *.safetensors, tokenizer_config.json.

    Only the paged engine serves checkpoint directories, so one it cannot run (another architecture, a
    quantization_config such as AWQ, GPTQ or FP8) is refused here, at start, naming what it is.
    """
    from backends.paged.model_config import ModelConfig  # torch-free

    config = json.loads((directory / "config.json").read_text())
    ModelConfig.from_hf(config)
    files = sorted(directory.glob("*.safetensors"))
    parameters, dtypes = 0, set()
    for file in files:
        for name, tensor in _safetensors_header(file).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            parameters += count
            dtypes.add(tensor["dtype"])
    tokenizer_config = directory / "tokenizer_config.json"
    template = (
        json.loads(tokenizer_config.read_text()).get("chat_template") if tokenizer_config.exists() else None
    )
    return ModelInfo(
        format="safetensors",
        family=str(config.get("model_type", "unknown")),
        parameter_count=parameters,
        quantization="/".join(SAFETENSORS_DTYPES.get(d, d) for d in sorted(dtypes)) or "unknown",
        size_bytes=sum(f.stat().st_size for f in files),
        chat_template=template if isinstance(template, str) else None,
    )


def inspect_model(path: Path) -> ModelInfo:
    return inspect_checkpoint(path) if path.is_dir() else inspect_gguf(path)


def check_paged_servable(path: Path) -> None:
    """Raise UnsupportedModelError, naming it, for a model the paged engine cannot run: reads only the
    header (no torch), so a start-up check costs milliseconds instead of a failure at first use."""
    from backends.paged.model_config import ModelConfig

    if path.is_dir():
        ModelConfig.from_dir(path)
        return
    from backends.paged.gguf_config import model_config_from_gguf, open_gguf
    from backends.paged.gguf_weights import check_tensor_types

    file = open_gguf(path)
    model_config_from_gguf(file)
    check_tensor_types(file)
