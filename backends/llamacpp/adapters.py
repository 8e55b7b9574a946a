"""GGUF LoRA adapters on a llama.cpp model, and the adapter set each context runs with (engine thread only).

llama.cpp loads an adapter onto a model (``llama_adapter_lora_init``: its tensors next to the model's)
and applies a set of loaded adapters, each with a scale, to a whole context
(``llama_set_adapters_lora``): every sequence of one ``llama_decode`` gets the same set. So the batching
engine puts only sequences of one adapter set into a step and switches the context's set between steps
(``LlamaAdapters.apply``). A switch makes llama.cpp plan its compute graph again on the next decode
(``sched_need_reserve``); applying the set a context already has is free (llama.cpp compares first).
KV cells computed under one set are valid for that set only: a prefix must never be shared (copied)
between sequences of different sets.

An adapter file is checked here before llama.cpp sees it (its metadata, and every tensor pair against
the base model's weights), because llama.cpp answers a bad file with a NULL and a line in its log: the
error raised names the adapter, the tensor and what is wrong.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp

from backends.base import BackendError

if TYPE_CHECKING:
    import gguf  # imported where an adapter is checked: `tandem serve` loads a model without it (~30 ms)

AdapterSet = tuple[str, ...]  # adapter names in a canonical (sorted) order; () is the base model alone
BASE: AdapterSet = ()
_SUFFIXES = (".lora_a", ".lora_b")


class AdapterLoadError(BackendError, ValueError):
    """An adapter file that cannot run on this base model; the message says why (the gateway: a 400)."""


@dataclass(frozen=True, slots=True)
class LoraFileInfo:
    """What an adapter file declares, once checked against the base model."""

    rank: int
    alpha: float
    tensors: int  # adapted weights (lora_a/lora_b pairs)


def _field_text(reader: gguf.GGUFReader, key: str) -> str | None:
    import gguf

    field = reader.fields.get(key)
    if field is None or not field.types or field.types[0] != gguf.GGUFValueType.STRING:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def _field_float(reader: gguf.GGUFReader, key: str) -> float | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return float(field.parts[field.data[0]][0])


def _read(path: Path, what: str) -> gguf.GGUFReader:
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader fails in many ways on a file that is not a GGUF
        raise AdapterLoadError(f"{what} {path} is not a readable GGUF file ({exc})") from None


def check_lora_gguf(path: Path, base_path: Path) -> LoraFileInfo:
    """The checks llama.cpp makes at load (src/llama-adapter.cpp), with messages that say what is wrong."""
    if not path.is_file():
        raise AdapterLoadError(f"no such adapter file: {path}")
    lora = _read(path, "the adapter")
    kind = _field_text(lora, "general.type")
    if kind != "adapter":
        hint = " (a model, not an adapter)" if kind == "model" else ""
        raise AdapterLoadError(f"{path} is not a LoRA adapter: general.type is {kind!r}{hint}")
    import gguf

    adapter_type = _field_text(lora, gguf.Keys.Adapter.TYPE)
    if adapter_type != "lora":
        raise AdapterLoadError(f"{path}: adapter.type is {adapter_type!r}, only 'lora' is supported")
    base = _read(base_path, "the base model")
    arch, base_arch = _field_text(lora, "general.architecture"), _field_text(base, "general.architecture")
    if arch != base_arch:
        raise AdapterLoadError(
            f"{path} is an adapter for a {arch!r} model, but the base model is {base_arch!r}"
        )
    # GGUFReader.shape is ggml's ne: [in, out] for a weight, [in, r] for lora_a, [r, out] for lora_b
    weights = {t.name: [int(n) for n in t.shape] for t in base.tensors}
    pairs: dict[str, dict[str, list[int]]] = {}
    for tensor in lora.tensors:
        suffix = next((s for s in _SUFFIXES if tensor.name.endswith(s)), None)
        if suffix is None:
            if tensor.name.endswith("_norm.weight"):
                continue  # llama.cpp skips these too
            raise AdapterLoadError(f"{path}: tensor {tensor.name!r} is neither a lora_a nor a lora_b")
        pairs.setdefault(tensor.name.removesuffix(suffix), {})[suffix] = [int(n) for n in tensor.shape]
    if not pairs:
        raise AdapterLoadError(f"{path} holds no LoRA tensors")
    ranks = set()
    for name, pair in sorted(pairs.items()):
        if len(pair) != 2:
            missing = next(s for s in _SUFFIXES if s not in pair)
            raise AdapterLoadError(
                f"{path}: {name}{missing} is missing (each weight needs lora_a and lora_b)"
            )
        if name not in weights:
            raise AdapterLoadError(f"{path}: the base model has no weight {name!r} (made for another model?)")
        (a_in, a_r), (b_r, b_out) = pair[".lora_a"][:2], pair[".lora_b"][:2]
        w_in, w_out = weights[name][:2]
        if (a_in, b_out) != (w_in, w_out):
            raise AdapterLoadError(
                f"{path}: {name} is [{w_in} in, {w_out} out] in the base model, but the adapter's pair "
                f"adapts [{a_in} in, {b_out} out] (made for a model of another size?)"
            )
        if a_r != b_r:
            raise AdapterLoadError(f"{path}: {name}'s lora_a has rank {a_r} but its lora_b {b_r}")
        ranks.add(a_r)
    alpha = _field_float(lora, gguf.Keys.Adapter.LORA_ALPHA)
    return LoraFileInfo(rank=max(ranks), alpha=alpha or 0.0, tensors=len(pairs))


@dataclass(frozen=True, slots=True)
class LlamaAdapter:
    name: str
    path: Path
    scale: float
    info: LoraFileInfo
    handle: llama_cpp.llama_adapter_lora_p


def adapter_set(adapter: str | None) -> AdapterSet:
    """The set a request runs with: its adapter alone, or the base model."""
    return BASE if adapter is None else (adapter,)


class AdapterTurns:
    """Which adapter set the engine's next step runs (one set per llama_decode, see the module docstring).

    The current set while it has work, since a switch costs a graph re-plan (measured on 1 CPU thread:
    ~1.2 ms on the tiny model, whose decode takes ~0.5 ms; 5-10 ms on SmolLM2-135M's ~24 ms decode), but at
    most `max_steps` steps in a row while another set waits; then the set whose oldest sequence has waited
    longest. Every set with work is thus served within (sets - 1) * max_steps steps."""

    def __init__(self, max_steps: int = 8) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, not {max_steps}")
        self.max_steps = max_steps
        self.current: AdapterSet = BASE
        self._streak = 0

    def choose(self, oldest: dict[AdapterSet, float]) -> AdapterSet | None:
        """`oldest`: per adapter set with work to do, when its longest-waiting sequence arrived (or last
        ran); None when there is no work at all."""
        if not oldest:
            return None
        others = [s for s in oldest if s != self.current]
        if self.current in oldest and (not others or self._streak < self.max_steps):
            self._streak += 1
            return self.current
        self.current = min(others, key=lambda s: oldest[s])
        self._streak = 1
        return self.current


class LlamaAdapters:
    """The adapters loaded on one llama.cpp model, by name, and the set applied to each of its contexts.

    Not thread-safe: call it from the engine's thread only (between steps)."""

    def __init__(self, model: llama_cpp.llama_model_p, base_path: Path) -> None:
        self._model = model
        self._base_path = base_path
        self._loaded: dict[str, LlamaAdapter] = {}
        self._applied: dict[int, tuple[llama_cpp.llama_context_p, AdapterSet]] = {}  # by context address
        self.switches = 0  # how many times a context's set changed (each costs a graph re-plan)

    def names(self) -> list[str]:
        return list(self._loaded)

    def get(self, name: str) -> LlamaAdapter:
        try:
            return self._loaded[name]
        except KeyError:
            raise KeyError(
                f"no LoRA adapter {name!r} is loaded (loaded: {', '.join(self._loaded) or 'none'})"
            ) from None

    def add(self, name: str, path: Path, scale: float = 1.0) -> LlamaAdapter:
        """Load a GGUF LoRA onto the model; AdapterLoadError (nothing loaded) if it cannot run on it."""
        if name in self._loaded:
            raise AdapterLoadError(f"an adapter named {name!r} is already loaded")
        info = check_lora_gguf(path, self._base_path)
        handle = llama_cpp.llama_adapter_lora_init(self._model, str(path).encode())
        if not handle:
            raise AdapterLoadError(f"llama.cpp could not load the adapter {path} (its log says why)")
        loaded = LlamaAdapter(name, path, float(scale), info, handle)
        self._loaded[name] = loaded
        return loaded

    def remove(self, name: str) -> None:
        """Unload an adapter; a context that has it applied loses it first (a freed adapter left in a
        context's set would be read by its next decode). The caller stops its sequences beforehand."""
        adapter = self.get(name)
        for ctx, applied in list(self._applied.values()):
            if name in applied:
                self.apply(ctx, tuple(n for n in applied if n != name))
        del self._loaded[name]
        llama_cpp.llama_adapter_lora_free(adapter.handle)

    def apply(self, ctx: llama_cpp.llama_context_p, adapters: AdapterSet) -> bool:
        """Make `ctx` run with exactly these adapters (each at its scale); returns whether that changed."""
        key = ctypes.cast(ctx, ctypes.c_void_p).value or 0
        wanted = tuple(sorted(set(adapters)))
        current = self._applied.get(key, (ctx, BASE))[1]
        if wanted == current and key in self._applied:
            return False
        chosen = [self.get(name) for name in wanted]
        if chosen:
            array = llama_cpp.llama_adapter_lora_p_ctypes * len(chosen)
            handles = array(*(a.handle for a in chosen))  # type: ignore[misc]
            scales = (ctypes.c_float * len(chosen))(*(a.scale for a in chosen))
            llama_cpp.llama_set_adapters_lora(ctx, handles, len(chosen), scales)
        else:
            llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        changed = wanted != current
        self._applied[key] = (ctx, wanted)
        self.switches += changed
        return changed

    def forget(self, ctx: llama_cpp.llama_context_p) -> None:
        """The context is about to be freed: stop tracking it."""
        self._applied.pop(ctypes.cast(ctx, ctypes.c_void_p).value or 0, None)

    def close(self) -> None:
        """Free every adapter (before the model; contexts using them must be freed or forgotten first)."""
        self._applied.clear()
        for adapter in self._loaded.values():
            llama_cpp.llama_adapter_lora_free(adapter.handle)
        self._loaded.clear()
