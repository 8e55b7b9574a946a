"""Build the model on the meta device, then fill it straight from safetensors, from a GGUF file (dequantized),
or with random weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from backends.paged.layers import ShardedLinear
from backends.paged.model import CausalLM
from backends.paged.model_config import ModelConfig


def checkpoint_files(path: Path) -> list[Path]:
    """Every safetensors shard of a checkpoint directory (via the index when there is one)."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return [path / name for name in sorted(set(weight_map.values()))]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    return files


def empty_model(cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> CausalLM:
    """Uninitialised parameters allocated once, in their final dtype, on their final device."""
    with torch.device("meta"):
        model = CausalLM(cfg)
    return model.to(dtype=dtype).to_empty(device=device).eval()


def expected_entries(model: CausalLM) -> set[str]:
    """What a complete checkpoint must fill: every parameter, every shard of a fused one."""
    entries: set[str] = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, ShardedLinear) and None not in module.offsets:
                entries.update(f"{full}#{shard}" for shard in module.offsets)
            else:
                entries.add(full)
    return entries


def is_gguf(path: Path) -> bool:
    """A GGUF file (by its magic, whatever its name) rather than a checkpoint directory."""
    if not path.is_file():
        return False
    with path.open("rb") as file:
        return file.read(4) == b"GGUF"


def load_checkpoint(path: Path, dtype: torch.dtype, device: torch.device) -> CausalLM:
    """A Hugging Face checkpoint directory, or a GGUF file."""
    if is_gguf(path):
        return load_gguf(path, dtype, device)
    cfg = ModelConfig.from_dir(path)
    model = empty_model(cfg, dtype, device)
    loaded: set[str] = set()
    read_device = str(device) if device.type == "cuda" else "cpu"
    with torch.no_grad():
        for file in checkpoint_files(path):
            with safe_open(file, framework="pt", device=read_device) as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    entry = model.load_weight(name, f.get_tensor(name))
                    if entry is not None:
                        loaded.add(entry)
    return _complete(model, loaded, path)


def load_gguf(path: Path, dtype: torch.dtype, device: torch.device) -> CausalLM:
    """Every tensor dequantized to float32 on the CPU, one at a time, then copied into its parameter."""
    from backends.paged.gguf_config import model_config_from_gguf, open_gguf
    from backends.paged.gguf_weights import check_tensor_types, gguf_weights

    file = open_gguf(path)
    cfg = model_config_from_gguf(file)
    check_tensor_types(file)  # before allocating anything
    model = empty_model(cfg, dtype, device)
    loaded: set[str] = set()
    with torch.no_grad():
        for name, values in gguf_weights(file, cfg):
            entry = model.load_weight(name, torch.from_numpy(values).to(device))
            if entry is not None:
                loaded.add(entry)
    return _complete(model, loaded, path)


def _complete(model: CausalLM, loaded: set[str], path: Path) -> CausalLM:
    missing = expected_entries(model) - loaded
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} tensors, e.g. {sorted(missing)[:5]}")
    model.init_buffers()
    return model


def random_model(
    preset: str | ModelConfig, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> CausalLM:
    """A model of a real shape with random weights and no checkpoint (benchmarks, tests)."""
    cfg = preset if isinstance(preset, ModelConfig) else ModelConfig.preset(preset)
    model = empty_model(cfg, dtype, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=gen)
    model.init_buffers()
    return model
