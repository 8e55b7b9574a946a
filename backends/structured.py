"""Structured output: compile a StructuredOutput for one vocabulary; match each sequence against it.

xgrammar does the work, as in vLLM and SGLang: a JSON schema (or "any JSON object", or a structural tag:
free text with constrained tool calls) becomes a grammar, compiled once per vocabulary into token masks;
each constrained sequence then gets a matcher that gives, at every step, the bitmask of tokens that can
continue a valid document, and that allows the vocabulary's end-of-sequence tokens only once the document
is complete (accepting one terminates the matcher).

Importing this module is cheap and torch-free, so the gateway can call validate(); xgrammar itself
(which imports torch and transformers, ~2 s) is imported on first use.
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from backends.base import BackendError, StructuredOutput

if TYPE_CHECKING:
    import numpy as np
    import torch

# Whitespace allowed between two JSON tokens. Unbounded, a model can pad with blanks until max_tokens;
# 20 still fits pretty-printed JSON (llama.cpp's json.gbnf bounds it the same way).
MAX_WHITESPACE = 20
# Compiled grammars kept per vocabulary (xgrammar's own cache, keyed by schema and options).
_CACHE_BYTES = 256 * 2**20
_ANY_OBJECT = '{"type": "object"}'
_XGRAMMAR_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[12:00:00] /path/file.cc:123: "


class InvalidStructuredOutputError(BackendError, ValueError):
    """The schema is not JSON, or is a JSON Schema that cannot be turned into a grammar (400)."""


def _xgrammar() -> ModuleType:
    import xgrammar  # deferred: it imports torch and transformers

    return xgrammar


def _options(spec: StructuredOutput) -> tuple[str, dict[str, Any]]:
    """The schema text and xgrammar's options for it.

    json_object mode is the schema {"type": "object"} with strict_mode off, so any properties may
    appear. A given schema is compiled in strict mode (vLLM's choice): properties and items it does not
    declare are never generated, so the output validates whatever the schema says about extras. A forced
    tool call (kind tool_calls) is such a schema too: of the call objects, with the functions' parameters.
    """
    if spec.kind == "json_object":
        return _ANY_OBJECT, {"strict_mode": False, "max_whitespace_cnt": MAX_WHITESPACE}
    assert spec.schema is not None
    if spec.kind == "tool_calls":
        # calls as models are taught to write them ({"name": "f", "arguments": {...}}): one space after
        # each separator and no other whitespace, so that padding cannot spend the output's tokens
        return spec.schema, {"strict_mode": True, "any_whitespace": False}
    return spec.schema, {"strict_mode": True, "max_whitespace_cnt": MAX_WHITESPACE}


def validate(spec: StructuredOutput) -> None:
    """Raise InvalidStructuredOutputError if `spec` cannot be compiled, or admits no document at all.

    Needs no model's tokenizer: the schema is compiled for a vocabulary of the 256 bytes, where a grammar
    that allows no first byte (e.g. {"$ref": "#"}, a schema that is only itself) admits no document. With a
    model's vocabulary such a grammar masks every token, and sampling fails on probabilities that are all
    NaN. ~1 ms for a new schema, then cached (after xgrammar's import), so it can run at admission.
    """
    if spec.kind == "json_object":
        return
    assert spec.schema is not None
    try:
        parsed = json.loads(spec.schema)
    except json.JSONDecodeError as exc:
        raise InvalidStructuredOutputError(f"the JSON schema is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidStructuredOutputError("the JSON schema must be a JSON object")
    if spec.kind == "structural_tag":  # built by tandem from the tools' schemas: compiling it checks them
        _byte_compiler().matcher(spec)
        return
    if not _byte_compiler().matcher(spec).allowed_mask().any():
        raise InvalidStructuredOutputError(
            'the JSON schema admits no JSON document (does it only refer to itself, as {"$ref": "#"}?)'
        )


@functools.cache
def _byte_compiler() -> StructuredCompiler:
    """Grammars over single bytes (and an end token), for validate(); one per process, its cache bounded."""
    return StructuredCompiler(Vocabulary([bytes([b]) for b in range(256)] + [b""], stop_ids=(256,)), 1)


def _unsupported(exc: RuntimeError) -> InvalidStructuredOutputError:
    message = _XGRAMMAR_PREFIX.sub("", str(exc).strip())
    return InvalidStructuredOutputError(f"unsupported JSON schema: {message}")


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """What the grammar compiler needs from a tokenizer."""

    token_bytes: Sequence[bytes]  # per id, the bytes it adds to the text (b"" for special tokens);
    #                               one entry per logit, so masks line up with the model's logits
    stop_ids: tuple[int, ...]  # end-of-sequence ids: allowed once the document is complete
    # a special token's text, for the tokens a request preserves (StructuredOutput.preserved_token_ids)
    special_bytes: Callable[[int], bytes] | None = None

    def unwritten(self, token_ids: frozenset[int]) -> frozenset[int]:
        """Those of `token_ids` that add no bytes (special tokens), stop tokens aside: those end the output,
        unwritten, preserved or not."""
        table, stops = self.token_bytes, self.stop_ids
        return frozenset(t for t in token_ids if 0 <= t < len(table) and not table[t] and t not in stops)

    def preserving(self, token_ids: frozenset[int]) -> Vocabulary:
        """This vocabulary with the special tokens `token_ids` as their text: xgrammar never allows a token
        of no bytes but a stop token, and the output has their text, so the grammar matches them as text (a
        trigger such as [TOOL_CALLS] as the token and as the same text spelled out alike)."""
        table = list(self.token_bytes)
        for token in sorted(self.unwritten(token_ids)):
            assert self.special_bytes is not None, "preserved tokens need the special tokens' text"
            table[token] = self.special_bytes(token)
        return Vocabulary(table, self.stop_ids, self.special_bytes)

    @property
    def size(self) -> int:
        return len(self.token_bytes)


class GrammarMatcher:
    """One sequence's place in its grammar. Driven by one thread at a time (the sequence's)."""

    __slots__ = ("_bits", "_matcher", "vocab_size")

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher  # xgrammar.GrammarMatcher
        self.vocab_size = vocab_size
        self._bits: np.ndarray | None = None  # allowed_mask()'s buffer, allocated on first use

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False (state unchanged) if the grammar does not allow it."""
        return bool(self._matcher.accept_token(token_id))

    @property
    def is_terminated(self) -> bool:
        """The document is complete and an end-of-sequence token was accepted."""
        return bool(self._matcher.is_terminated())

    def fill_bitmask(self, bitmask: torch.Tensor | np.ndarray, row: int) -> None:
        """Write the allowed next tokens into `bitmask[row]` (int32, CPU; bit j of word i = token 32i+j)."""
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def allowed_mask(self) -> np.ndarray:
        """The allowed next tokens as a bool array over the vocabulary (for one-sequence samplers)."""
        import numpy as np  # not at import: the gateway validates schemas with this module, numpy-free

        if self._bits is None:
            self._bits = np.empty((1, math.ceil(self.vocab_size / 32)), dtype=np.int32)
        self.fill_bitmask(self._bits, 0)
        # bit j of int32 word i is bit j % 8 of byte 4i + j // 8 on little-endian hosts (x86, ARM)
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little", count=self.vocab_size)
        return bits.view(bool)


class StructuredCompiler:
    """Grammars for one vocabulary: compiles each StructuredOutput once and hands out matchers.

    Build it on the thread that serves the backend's sequences; compiling a new schema takes ~5 ms on
    a 1k vocabulary and ~0.1-0.5 s on a 150k one (once per schema, then cached).
    """

    def __init__(self, vocab: Vocabulary, max_threads: int = 4) -> None:
        self.vocab_size = vocab.size
        self._vocab, self._max_threads = vocab, max_threads
        self._compiler = self._new_compiler(vocab)
        # one compiler per set of preserved tokens (a format's markers: a few per model), built on first use
        self._preserving: dict[frozenset[int], Any] = {}

    def _new_compiler(self, vocab: Vocabulary) -> Any:
        xgr = _xgrammar()
        info = xgr.TokenizerInfo(
            list(vocab.token_bytes),
            xgr.VocabType.RAW,
            vocab_size=vocab.size,
            stop_token_ids=list(vocab.stop_ids),
        )
        return xgr.GrammarCompiler(
            info, max_threads=self._max_threads, cache_enabled=True, cache_limit_bytes=_CACHE_BYTES
        )

    def _compiler_for(self, preserved: frozenset[int]) -> Any:
        preserved = self._vocab.unwritten(preserved)  # an ordinary token's text is in the vocabulary already
        if not preserved:
            return self._compiler
        compiler = self._preserving.get(preserved)
        if compiler is None:
            compiler = self._preserving[preserved] = self._new_compiler(self._vocab.preserving(preserved))
        return compiler

    def matcher(self, spec: StructuredOutput) -> GrammarMatcher:
        """A fresh matcher at the start of the document; raises InvalidStructuredOutputError."""
        compiler = self._compiler_for(spec.preserved_token_ids)
        try:
            if spec.kind == "structural_tag":
                assert spec.schema is not None
                compiled = compiler.compile_structural_tag(spec.schema)
            else:
                schema, options = _options(spec)
                compiled = compiler.compile_json_schema(schema, **options)
        except RuntimeError as exc:
            raise _unsupported(exc) from None
        return GrammarMatcher(_xgrammar().GrammarMatcher(compiled), self.vocab_size)


# --- batches (the paged engine) ------------------------------------------------------------------------


_per_thread = threading.local()


def _batch_filler() -> Any:
    """An xgrammar.BatchGrammarMatcher (a thread pool that fills many rows at once) per engine thread, so
    engines serving different models never share one."""
    filler = getattr(_per_thread, "filler", None)
    if filler is None:
        filler = _per_thread.filler = _xgrammar().BatchGrammarMatcher()
    return filler


def batch_bitmask(matchers: Sequence[GrammarMatcher], rows: Sequence[int], batch_size: int) -> torch.Tensor:
    """int32 [batch_size, ceil(V / 32)] on the CPU: row rows[i] from matchers[i], every other row all-ones."""
    assert matchers, "only batches with a constrained sequence need a bitmask"
    xgr = _xgrammar()
    bitmask = xgr.allocate_token_bitmask(batch_size, matchers[0].vocab_size)
    if len(matchers) == 1:  # no thread hand-off for the common case
        matchers[0].fill_bitmask(bitmask, rows[0])
    else:
        _batch_filler().batch_fill_next_token_bitmask([m._matcher for m in matchers], bitmask, list(rows))
    return bitmask


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> None:
    """Set the disallowed logits of `rows` (int32 [R]) to -inf, in place; logits [B, V], bitmask and rows
    on one device (xgrammar picks its CPU kernel or, on CUDA, its Triton kernel)."""
    _xgrammar().apply_token_bitmask_inplace(logits, bitmask, vocab_size=logits.shape[1], indices=rows)
