"""A deterministic random-weight tiny model, written both as an HF checkpoint and as a GGUF file.

Used by tests and demos: no download, ~1 MB, generated in well under a second, and both files hold
the SAME weights, so llama.cpp and transformers (and our own paged engine) compute the same function
and greedy decoding gives the same tokens.

    tm = make_tiny_model(out_dir, arch="llama", seed=0)   # arch: "llama" or "qwen2"
    tm.hf_dir     # config.json, model.safetensors, tokenizer.json, tokenizer_config.json, ...
    tm.gguf_path  # model.gguf (F32), tokenizer + chat template in the metadata

Shapes: hidden 64, 2 layers, 4 query heads / 2 KV heads (GQA, head_dim 16), MLP 160, untied
lm_head, rope_theta 1e4, rms_norm_eps 1e-5, 4096 positions, vocab 1024 (256 bytes + 765 BPE merges
learned from ``corpus.py`` + ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``). ``qwen2`` adds
q/k/v biases; all other tensors are identical between the two archs for a given seed. Tokenizer:
byte-level BPE, no BOS; ``llama`` splits with the GPT-2 regex (GGUF pre "gpt-2"), ``qwen2`` with
Qwen2's regex + NFC (GGUF pre "qwen2") because transformers forces that on qwen2 checkpoints -- see
``tokenizer_files.py``. Chat template: ChatML, identical in tokenizer_config.json and the GGUF.

Weight scales (``weights.py``): the usual 0.02-std init gives near-uniform logits, so greedy
decoding sits on near-ties and tiny float differences between runtimes flip tokens. Instead:
embeddings std 1; q/k std 0.15 (attention scores with std ~1.5: content- and position-dependent, so
the output depends on the context); v/o std 0.08 (attention adds a modest share of the residual
stream); MLP std 0.15 in / 0.12 out; norm weights 1 + N(0, 0.1); lm_head std 0.6, i.e. logits with
std ~4.4 and a median top-1 margin of ~1.2 logits. lm_head also gets ``-0.3 * 0.6 * embed_tokens``
added ("anti-repeat"): without it the least context-dependent tokens map to themselves and greedy
text can lock into one token repeated forever; with it, greedy text keeps ~40-55 distinct tokens
per 64 and showed no short loops over 66 prompts x 128 tokens.

Measured against transformers (float32, CPU): llama.cpp with an F32 KV cache changes the top-1
margin by ~2.5e-6 of itself (median), so greedy parity is exact in practice. With llama.cpp's
default F16 KV cache, the rounding of K/V moves it by ~4e-4 of itself (median; p99 ~2e-2): rare
flips at near-ties remain possible (none seen over 12 x 64 greedy tokens), so tests that need exact
parity should use ``type_k=type_v=GGML_TYPE_F32``. Sharper attention (q/k 0.25) or larger v/o
(0.15) made that F16 noise ~10x larger; smaller v/o (0.06) made the text loop.

Two groups of lm_head rows are scaled down so they are rarely predicted: special tokens (x0.3; keeps
EOS ``<|im_end|>`` out of the first ~64 greedy tokens of ordinary prompts, so ``max_tokens`` ends
generation with finish reason "length"), and tokens that are not complete printable UTF-8 by
themselves (lone bytes, cut characters, control chars; x0.5) so the generated text is mostly valid
UTF-8. Any token can still be sampled.

Files are written under temporary names and renamed into place, then a stamp file records the
generator version / arch / seed / file sizes; a later call with a matching stamp returns at once.
A process-level file lock serializes concurrent callers on the same directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.tiny_model.tokenizer_files import build_tokenizer
from backends.tiny_model.weights import ARCHS, TinyShapes, make_weights

__all__ = ["ARCHS", "GENERATOR_VERSION", "TinyModel", "make_tiny_model"]

GENERATOR_VERSION = 1  # bump whenever the bytes written for a given (arch, seed) change
_STAMP = "tiny_model.stamp.json"
_HF_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


@dataclass(frozen=True, slots=True)
class TinyModel:
    root: Path
    arch: str
    seed: int
    hf_dir: Path
    gguf_path: Path
    vocab_size: int
    eos_token_id: int  # <|im_end|>
    endoftext_id: int  # <|endoftext|> (also bos/pad id in config.json; never added to prompts)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # non-POSIX: no cross-process lock, the stamp protocol still holds
        yield
        return
    with open(out_dir / ".tiny_model.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _file_sizes(root: Path) -> dict[str, int] | None:
    rels = [f"hf/{n}" for n in _HF_FILES] + ["model.gguf"]
    sizes: dict[str, int] = {}
    for rel in rels:
        path = root / rel
        if not path.is_file():
            return None
        sizes[rel] = path.stat().st_size
    return sizes


def _stamp_header(arch: str, seed: int, markers: bool) -> dict[str, Any]:
    head: dict[str, Any] = {"generator_version": GENERATOR_VERSION, "arch": arch, "seed": seed}
    return head | ({"markers": True} if markers else {})


def _is_current(out_dir: Path, arch: str, seed: int, markers: bool) -> bool:
    try:
        stamp = json.loads((out_dir / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    header, keys = _stamp_header(arch, seed, markers), ("generator_version", "arch", "seed", "markers")
    if {k: stamp.get(k) for k in keys} != {k: header.get(k) for k in keys}:
        return False
    return stamp.get("files") is not None and stamp.get("files") == _file_sizes(out_dir)


def _write_all(out_dir: Path, arch: str, seed: int, markers: bool) -> None:
    from backends.tiny_model.gguf_format import write_gguf
    from backends.tiny_model.hf_format import write_hf_dir

    tok = build_tokenizer(markers)
    shapes = TinyShapes(vocab_size=tok.vocab_size)
    weights = make_weights(shapes, tok, arch, seed)
    for stale in out_dir.glob(".tmp-*"):  # left by a crashed run (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir))
    try:
        (tmp / "hf").mkdir()
        write_hf_dir(tmp / "hf", shapes, tok, arch, weights)
        write_gguf(tmp / "model.gguf", shapes, tok, arch, weights, name=f"tandem-tiny-{arch}-s{seed}")
        (out_dir / _STAMP).unlink(missing_ok=True)  # invalidate first: no stamp until all is in place
        if (out_dir / "hf").exists():
            shutil.rmtree(out_dir / "hf")
        os.replace(tmp / "hf", out_dir / "hf")
        os.replace(tmp / "model.gguf", out_dir / "model.gguf")
        stamp = _stamp_header(arch, seed, markers) | {"files": _file_sizes(out_dir)}
        (tmp / _STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        os.replace(tmp / _STAMP, out_dir / _STAMP)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_tiny_model(out_dir: Path, arch: str = "llama", seed: int = 0, markers: bool = False) -> TinyModel:
    """Create (or reuse) the tiny model of ``arch`` / ``seed`` under ``out_dir``; see module doc.

    markers: the vocabulary also holds the tool-call formats' marker tokens (tokenizer_files.MARKER_TOKENS)
    as control tokens, for tests of formats whose calls open with special tokens; a different model."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        if not _is_current(out_dir, arch, seed, markers):
            _write_all(out_dir, arch, seed, markers)
    tok = build_tokenizer(markers)
    return TinyModel(
        root=out_dir,
        arch=arch,
        seed=seed,
        hf_dir=out_dir / "hf",
        gguf_path=out_dir / "model.gguf",
        vocab_size=tok.vocab_size,
        eos_token_id=tok.im_end_id,
        endoftext_id=tok.endoftext_id,
    )
