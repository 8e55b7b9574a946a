"""A deterministic random LoRA adapter for the tiny model, written as a PEFT directory AND a GGUF LoRA.

Both files hold the same numbers, so Hugging Face + peft, the paged engine and llama.cpp compute the same
adapted function (the adapter parity test, as the base model's):

    lora = make_tiny_lora(out_dir, arch="llama", rank=8, alpha=16, targets=("q_proj", "v_proj"), seed=1)
    lora.peft_dir   # adapter_config.json + adapter_model.safetensors (PEFT's names and [r, in] / [out, r])
    lora.gguf_path  # adapter.gguf: what llama.cpp's convert_lora_to_gguf.py writes for that directory

Scales: PEFT initializes lora_B to zero (a no-op adapter); a test adapter must change the output, yet
keep the tiny model's decisive logits (see the tiny model's docstring), so both A and B are random and
sized so that the merged delta ``scaling * B @ A`` has DELTA_FRACTION of the target weight's own std,
whatever the rank and alpha: the adapter moves greedy text without turning it into noise.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from backends.tiny_model import weights as base
from backends.tiny_model.weights import ARCHS, TinyShapes

__all__ = ["DEFAULT_TARGETS", "TARGET_MODULES", "TinyLora", "lora_delta", "make_tiny_lora"]

# PEFT's module names (what target_modules lists), their HF parent module, and their base weight's std
TARGET_MODULES: dict[str, tuple[str, float]] = {
    "q_proj": ("self_attn", base.QK_STD),
    "k_proj": ("self_attn", base.QK_STD),
    "v_proj": ("self_attn", base.VO_STD),
    "o_proj": ("self_attn", base.VO_STD),
    "gate_proj": ("mlp", base.MLP_IN_STD),
    "up_proj": ("mlp", base.MLP_IN_STD),
    "down_proj": ("mlp", base.MLP_OUT_STD),
}
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
DELTA_FRACTION = 0.5  # std of the merged delta, relative to the base weight's std
PEFT_PREFIX = "base_model.model."  # PeftModelForCausalLM wraps the HF model: its keys start with this


@dataclass(frozen=True, slots=True)
class TinyLora:
    root: Path
    peft_dir: Path
    gguf_path: Path
    arch: str
    rank: int
    alpha: float
    targets: tuple[str, ...]
    seed: int
    use_rslora: bool

    @property
    def scaling(self) -> float:
        """PEFT's multiplier of B @ A: alpha / r (rsLoRA: alpha / sqrt(r))."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


def _module_shape(shapes: TinyShapes, module: str) -> tuple[int, int]:
    """(out, in) of a target module's weight."""
    h, inter = shapes.hidden_size, shapes.intermediate_size
    q_out = shapes.num_attention_heads * shapes.head_dim
    kv_out = shapes.num_key_value_heads * shapes.head_dim
    return {
        "q_proj": (q_out, h),
        "k_proj": (kv_out, h),
        "v_proj": (kv_out, h),
        "o_proj": (h, q_out),
        "gate_proj": (inter, h),
        "up_proj": (inter, h),
        "down_proj": (h, inter),
    }[module]


def hf_module_name(layer: int, module: str) -> str:
    """model.layers.N.self_attn.q_proj (the base weight's name without `.weight`)."""
    return f"model.layers.{layer}.{TARGET_MODULES[module][0]}.{module}"


def lora_weights(
    shapes: TinyShapes, rank: int, scaling: float, targets: tuple[str, ...], seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per HF module name, (A [r, in], B [out, r]) float32. Same arguments -> same values anywhere."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer in range(shapes.num_hidden_layers):
        for module in TARGET_MODULES:  # a fixed order, so a target's numbers do not depend on the others
            if module not in targets:
                continue
            rows, cols = _module_shape(shapes, module)
            a_std = 1.0 / math.sqrt(cols)
            b_std = DELTA_FRACTION * TARGET_MODULES[module][1] / (scaling * math.sqrt(rank) * a_std)
            a = (rng.standard_normal((rank, cols), dtype=np.float32) * np.float32(a_std)).astype(np.float32)
            b = (rng.standard_normal((rows, rank), dtype=np.float32) * np.float32(b_std)).astype(np.float32)
            out[hf_module_name(layer, module)] = (a, b)
    return out


def lora_delta(lora: TinyLora, module_name: str) -> np.ndarray:
    """The merged weight delta ``scaling * B @ A`` of one module, read back from the PEFT file."""
    from safetensors.numpy import load_file

    tensors = load_file(str(lora.peft_dir / "adapter_model.safetensors"))
    a = tensors[f"{PEFT_PREFIX}{module_name}.lora_A.weight"]
    b = tensors[f"{PEFT_PREFIX}{module_name}.lora_B.weight"]
    return np.float32(lora.scaling) * (b @ a)


def _adapter_config(lora: TinyLora, base_model: str) -> dict[str, object]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "target_modules": list(lora.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": lora.use_rslora,
        "use_dora": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "revision": None,
    }


def make_tiny_lora(
    out_dir: Path,
    arch: str = "llama",
    rank: int = 8,
    alpha: float = 16.0,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    seed: int = 1,
    use_rslora: bool = False,
    base_model: str | None = None,
) -> TinyLora:
    """Write OUT/peft/ and OUT/adapter.gguf (replacing earlier ones) for the tiny model of `arch`."""
    from backends.tiny_model.lora_gguf import write_lora_gguf
    from backends.tiny_model.tokenizer_files import build_tokenizer

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    unknown = [t for t in targets if t not in TARGET_MODULES]
    if unknown or not targets:
        raise ValueError(
            f"targets must be some of {', '.join(TARGET_MODULES)}, not {','.join(unknown) or '-'}"
        )
    if rank < 1 or alpha <= 0:
        raise ValueError(f"rank must be >= 1 and alpha > 0 (got rank {rank}, alpha {alpha})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = tuple(t for t in TARGET_MODULES if t in targets)
    lora = TinyLora(
        out_dir,
        out_dir / "peft",
        out_dir / "adapter.gguf",
        arch,
        rank,
        float(alpha),
        ordered,
        seed,
        use_rslora,
    )
    shapes = TinyShapes(vocab_size=build_tokenizer().vocab_size)
    pairs = lora_weights(shapes, rank, lora.scaling, ordered, seed)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-lora-", dir=out_dir))
    try:
        (tmp / "peft").mkdir()
        tensors = {}
        for module, (a, b) in pairs.items():
            tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a
            tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b
        save_file(tensors, str(tmp / "peft" / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "peft" / "adapter_model.safetensors").chmod(0o644)  # safetensors creates it owner-only
        config = _adapter_config(lora, base_model or f"tandem-tiny-{arch}")
        (tmp / "peft" / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_lora_gguf(tmp / "adapter.gguf", shapes, lora, pairs)
        if lora.peft_dir.exists():
            shutil.rmtree(lora.peft_dir)
        os.replace(tmp / "peft", lora.peft_dir)
        os.replace(tmp / "adapter.gguf", lora.gguf_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lora
