"""A GGUF model on llama.cpp and its vocabulary: tokenizing, token bytes and texts, grammars, logprobs.

The model is loaded through llama.cpp's own API (llama_model_load_from_file), not llama-cpp-python's Llama:
the sequences run in the batching engine's context (backends.llamacpp.engine), and a Llama would add a
context of its own that nothing runs on, compile the file's chat template with Jinja for a chat handler
tandem never calls (tandem renders templates itself), and print the whole metadata to stderr — ~50 ms of
Python on a load that `tandem serve` overlaps with its own start-up (cold start).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp

from backends.base import StructuredOutput, TokenLogprob
from backends.llamacpp.native_log import route_native_logs
from backends.llamacpp.sampler import SampledToken
from backends.structured import GrammarMatcher, StructuredCompiler, Vocabulary

_PIECE_BUFFER = 64  # most pieces fit; a longer one says how long it is and is fetched again


def token_piece(vocab: llama_cpp.llama_vocab_p, token: int, *, special: bool) -> bytes:
    """One token's bytes (special: render control tokens' text too).

    Not Llama.detokenize: llama-cpp-python 0.3.36 gives it a 32-byte buffer and drops a longer piece
    entirely (runs of spaces in Llama 3's and Qwen2's vocabularies: indented code lost its indentation).
    llama_token_to_piece returns minus the size it needs when the buffer is too small.
    """
    size = _PIECE_BUFFER
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def end_of_generation_ids(vocab: llama_cpp.llama_vocab_p, n_vocab: int) -> frozenset[int]:
    """The tokens llama.cpp ends a generation on (llama_vocab_is_eog), over the whole vocabulary.

    Called through a binding that keeps the GIL (ctypes.PyDLL): through llama-cpp-python's, each of the
    ~50k-150k calls of this trivial function gives the GIL up and waits to take it back, which costs
    seconds when another thread runs Python meanwhile (`tandem serve` imports its app while the model
    loads: measured 48 s against 0.5 s for the whole load beside a busy thread)."""
    try:
        is_eog = ctypes.PyDLL(llama_cpp.llama_cpp._lib._name).llama_vocab_is_eog
    except (AttributeError, OSError):  # another llama-cpp-python layout: the same answer, slower
        is_eog = llama_cpp.llama_vocab_is_eog
    else:
        is_eog.argtypes, is_eog.restype = [ctypes.c_void_p, ctypes.c_int32], ctypes.c_bool
    return frozenset(t for t in range(n_vocab) if is_eog(vocab, t))


class ModelLoadError(ValueError):
    """llama.cpp could not load the file (its log says why: tandem.llamacpp.native)."""


def load_model(path: Path, *, vocab_only: bool = False) -> llama_cpp.llama_model_p:
    """The model's weights (memory-mapped) and vocabulary, on the CPU; or its vocabulary alone."""
    if not path.exists():
        raise ModelLoadError(f"Model path does not exist: {path}")
    llama_cpp.llama_backend_init()  # once per process is enough; repeating it is harmless
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    params.vocab_only = vocab_only
    model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), params)
    if not model:
        raise ModelLoadError(f"Failed to load model from file: {path}")
    return model


def _meta_text(model: llama_cpp.llama_model_p, key: str) -> str | None:
    """A metadata string of the GGUF (llama_model_meta_val_str returns its full length, like snprintf)."""
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, size)
        if n < 0:
            return None
        if n < size:
            return buf.raw[:n].decode("utf-8", errors="replace")
        size = n + 1


class LlamaSession:
    def __init__(
        self, model: llama_cpp.llama_model_p, path: Path, threads: int, context_length: int | None = None
    ) -> None:
        self._model: llama_cpp.llama_model_p | None = model
        self._context_length = context_length  # None: the model's trained context
        self.path = path
        self.threads = threads
        vocab = llama_cpp.llama_model_get_vocab(model)
        if not vocab:
            raise ModelLoadError(f"Failed to get vocab from model: {path}")
        self._vocab = vocab
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self._n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(model))
        self._chat_template = _meta_text(model, "tokenizer.chat_template")
        self._eos_ids = end_of_generation_ids(self._vocab, self._n_vocab)
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._piece_cache: dict[int, bytes] = {}
        self._grammars: StructuredCompiler | None = None  # built on the first structured request

    @classmethod
    def open(
        cls, path: Path, *, context_length: int | None, threads: int, vocab_only: bool = False
    ) -> LlamaSession:
        """vocab_only: the file's vocabulary alone (tokenizing, token bytes), no weights to run."""
        route_native_logs()
        model = load_model(path, vocab_only=vocab_only)
        try:
            return cls(model, path, threads, context_length)
        except BaseException:
            llama_cpp.llama_model_free(model)
            raise

    @property
    def context_length(self) -> int:
        """The most tokens (prompt and output) one sequence may hold."""
        return self._context_length or self._n_ctx_train

    @property
    def model(self) -> llama_cpp.llama_model_p:
        if self._model is None:
            raise RuntimeError("the model is closed")
        return self._model

    @property
    def eos_ids(self) -> frozenset[int]:
        """End-of-generation tokens (llama_vocab_is_eog)."""
        return self._eos_ids

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    @property
    def chat_template_source(self) -> str | None:
        return self._chat_template

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return token_piece(self._vocab, token, special=True).decode("utf-8", errors="replace")

    @property
    def bos_text(self) -> str:
        return self._special_text(llama_cpp.llama_vocab_bos(self._vocab))

    @property
    def eos_text(self) -> str:
        return self._special_text(llama_cpp.llama_vocab_eos(self._vocab))

    def tokenize(self, text: str, *, add_special_tokens: bool) -> list[int]:
        """llama.cpp's tokens for `text`, control tokens' text parsed as those tokens (special). Room for
        one token per byte and two more (bos, eos) fits nearly every text; llama_tokenize returns minus the
        room it needs otherwise."""
        data = text.encode("utf-8")
        add_bos = add_special_tokens and self._add_bos
        size = len(data) + 2
        while True:
            tokens = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, size, add_bos, True)
            if n >= 0:
                return list(tokens[:n])
            if -n <= size:
                raise RuntimeError(f"llama.cpp could not tokenize the text ({n})")
            size = -n

    def detokenize(self, token_ids: list[int]) -> str:
        """llama.cpp's inverse of tokenize, control tokens' text included (not Llama.detokenize: it drops
        them). llama_detokenize returns minus the size it needs when the buffer is too small."""
        tokens = (llama_cpp.llama_token * len(token_ids))(*token_ids)
        size = max(_PIECE_BUFFER, 8 * len(token_ids))
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self._vocab, tokens, len(token_ids), buf, size, False, True)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n

    def close(self) -> None:
        """Free the model (after every context on it: the engine's, the embedder's); idempotent."""
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def token_bytes(self, token: int) -> bytes:
        return self._token_bytes(token)

    def output_bytes(self, token: int, preserved: frozenset[int]) -> bytes:
        """What a sampled token adds to the output: its piece, or for a special token the request preserves
        (a tool-call marker its reader parses: backends.tools.markers) its text; other special tokens none."""
        piece = self._token_bytes(token)
        if not piece and token in preserved:
            return self._special_bytes(token)
        return piece

    def _special_bytes(self, token: int) -> bytes:
        return token_piece(self._vocab, token, special=True)

    def _token_bytes(self, token: int) -> bytes:
        piece = self._piece_cache.get(token)
        if piece is None:
            piece = self._piece_cache[token] = token_piece(self._vocab, token, special=False)
        return piece

    def _token_text(self, token: int) -> str:
        return token_piece(self._vocab, token, special=True).decode("utf-8", errors="replace")

    def logprob(self, sampled: SampledToken) -> TokenLogprob:
        return TokenLogprob(
            token_id=sampled.token_id,
            token=self._token_text(sampled.token_id),
            logprob=sampled.logprob if sampled.logprob is not None else 0.0,
            top=tuple((t, self._token_text(t), lp) for t, lp in sampled.top),
        )

    def matcher(self, spec: StructuredOutput) -> GrammarMatcher:
        """A matcher for `spec` over this model's vocabulary; raises InvalidStructuredOutputError."""
        if self._grammars is None:
            token_bytes = [self._token_bytes(t) for t in range(self._n_vocab)]  # control tokens: b""
            vocab = Vocabulary(token_bytes, tuple(sorted(self._eos_ids)), self._special_bytes)
            self._grammars = StructuredCompiler(vocab, max_threads=self.threads)
        return self._grammars.matcher(spec)
