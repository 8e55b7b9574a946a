"""One llama.cpp context and the token loop that runs a request on it (worker thread only)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp
import numpy as np

from backends.base import FinishReason, GenerationChunk, GenerationRequest, StructuredOutput, TokenLogprob
from backends.llamacpp.native_log import route_native_logs
from backends.llamacpp.sampler import SampledToken, SequenceSampler
from backends.streams import ChunkSink
from backends.structured import GrammarMatcher, InvalidStructuredOutputError, StructuredCompiler, Vocabulary
from backends.text_stream import TextAssembler

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


class LlamaSession:
    def __init__(self, llm: llama_cpp.Llama, path: Path, threads: int) -> None:
        self._llm = llm
        self.path = path
        self.threads = threads
        self._vocab = llm._model.vocab
        self._n_vocab = llm.n_vocab()
        self._eos_ids = frozenset(
            t for t in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t)
        )
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._piece_cache: dict[int, bytes] = {}
        self._grammars: StructuredCompiler | None = None  # built on the first structured request

    @classmethod
    def open(cls, path: Path, *, context_length: int | None, threads: int) -> LlamaSession:
        route_native_logs()
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=context_length or 0,  # 0: the model's trained context
            n_threads=threads,
            n_threads_batch=threads,
            verbose=True,  # verbose=False swaps fds 1 and 2 under other threads' feet: see native_log
            # tandem renders chat templates itself; naming a format skips llama-cpp-python's guess, which
            # would print the whole template to stderr on every load (verbose)
            chat_format="chatml",
        )
        return cls(llm, path, threads)

    @property
    def context_length(self) -> int:
        return self._llm.n_ctx()

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    @property
    def chat_template_source(self) -> str | None:
        return self._llm.metadata.get("tokenizer.chat_template")

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return token_piece(self._vocab, token, special=True).decode("utf-8", errors="replace")

    @property
    def bos_text(self) -> str:
        return self._special_text(self._llm.token_bos())

    @property
    def eos_text(self) -> str:
        return self._special_text(self._llm.token_eos())

    def tokenize(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return self._llm.tokenize(
            text.encode("utf-8"), add_bos=add_special_tokens and self._add_bos, special=True
        )

    def close(self) -> None:
        self._llm.close()

    def _token_bytes(self, token: int) -> bytes:
        piece = self._piece_cache.get(token)
        if piece is None:
            piece = self._piece_cache[token] = token_piece(self._vocab, token, special=False)
        return piece

    def _token_text(self, token: int) -> str:
        return token_piece(self._vocab, token, special=True).decode("utf-8", errors="replace")

    def _eval_prompt(self, prompt: list[int]) -> None:
        """Evaluate the prompt, reusing the KV of the longest prefix shared with the previous request."""
        llm = self._llm
        shared = 0
        limit = min(llm.n_tokens, len(prompt) - 1)  # always evaluate >= 1 token to get fresh logits
        previous = llm.input_ids
        while shared < limit and previous[shared] == prompt[shared]:
            shared += 1
        llm.n_tokens = shared  # eval() drops the KV cache beyond n_tokens
        llm.eval(prompt[shared:])

    def _logits(self) -> np.ndarray:
        pointer = llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
        return np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self._n_vocab,)
        )

    def _logprob(self, sampled: SampledToken) -> TokenLogprob:
        return TokenLogprob(
            token_id=sampled.token_id,
            token=self._token_text(sampled.token_id),
            logprob=sampled.logprob if sampled.logprob is not None else 0.0,
            top=tuple((t, self._token_text(t), lp) for t, lp in sampled.top),
        )

    def _matcher(self, spec: StructuredOutput) -> GrammarMatcher:
        """A matcher for `spec` over this model's vocabulary; raises InvalidStructuredOutputError."""
        if self._grammars is None:
            token_bytes = [self._token_bytes(t) for t in range(self._n_vocab)]  # control tokens: b""
            vocab = Vocabulary(token_bytes, tuple(sorted(self._eos_ids)))
            self._grammars = StructuredCompiler(vocab, max_threads=self.threads)
        return self._grammars.matcher(spec)

    def run(self, request: GenerationRequest, sink: ChunkSink) -> int:
        """Generate until finished or cancelled; returns the number of tokens generated."""
        params = request.sampling
        grammar = None
        if params.structured is not None:
            try:
                grammar = self._matcher(params.structured)
            except InvalidStructuredOutputError as exc:  # the request's fault: the stream raises it
                sink.put(exc)
                return 0
        sampler = SequenceSampler(params, request.prompt_token_ids, self._n_vocab, self._eos_ids)
        stop_ids = self._eos_ids | set(params.stop_token_ids)
        assembler = TextAssembler(params.stop)
        self._eval_prompt(request.prompt_token_ids)
        generated = 0
        while not sink.cancelled:
            sampled = sampler.sample(self._logits(), grammar.allowed_mask() if grammar else None)
            token = sampled.token_id
            generated += 1
            logprobs = [self._logprob(sampled)] if params.logprobs is not None else None
            finish: FinishReason | None = None
            if grammar is not None and not grammar.accept(token):
                raise RuntimeError(f"token {token} sampled against the grammar's mask")
            # A terminated grammar has just accepted end-of-sequence: the document is complete, and
            # nothing may follow it, ignore_eos or not.
            ends = grammar is not None and grammar.is_terminated
            if ends or (token in stop_ids and not (params.ignore_eos and token in self._eos_ids)):
                text, finish = assembler.finish(), FinishReason.STOP
            else:
                text = assembler.push(self._token_bytes(token))
                if assembler.stopped:
                    finish = FinishReason.STOP
                elif generated >= params.max_tokens:
                    text, finish = text + assembler.finish(), FinishReason.LENGTH
            sink.put(GenerationChunk(text=text, token_ids=[token], finish_reason=finish, logprobs=logprobs))
            if finish is not None:
                break
            self._llm.eval([token])
        return generated
