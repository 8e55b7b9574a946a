"""The tiny model's tokenizer: learned BPE + ChatML special tokens, and its HF file forms.

Pre-tokenization depends on the arch. ``llama``: the GPT-2 regex (HF ByteLevel pre-tokenizer, GGUF
``tokenizer.ggml.pre = "gpt-2"``). ``qwen2``: Qwen2's regex (digits split one by one, etc.) plus NFC
normalization, GGUF ``tokenizer.ggml.pre = "qwen2"`` -- because transformers >= 5 always loads a
``model_type: qwen2`` checkpoint with its own ``Qwen2Tokenizer``, which hard-codes that regex and NFC
whatever tokenizer.json says, so a GPT-2-regex qwen2 checkpoint could not tokenize like llama.cpp.
llama.cpp does not NFC-normalize, so for ``qwen2`` the two agree on NFC-normalized text only (as
with real Qwen2 GGUFs). Both archs share one vocabulary, learned with the GPT-2 split.

Vocabulary layout: ids 0..255 are the single bytes (GPT-2 byte-to-unicode alphabet, id == byte
value), then one token per learned merge, then the special tokens ``<|endoftext|>``,
``<|im_start|>`` and ``<|im_end|>`` (in that order, at the end). No BOS token is ever added.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from backends.tiny_model.bpe import Pair, learn_bpe
from backends.tiny_model.corpus import CORPUS

NUM_MERGES = 765  # with the current corpus: 256 bytes + 765 merged tokens + 3 specials = 1024 ids
MODEL_MAX_LENGTH = 4096

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)
# The marker tokens of the tool-call formats that open calls with special tokens (gpt-oss's harmony, Llama
# 3's python tag, Mistral's, Granite's), added after those as control tokens by make_tiny_model(markers=True):
# a random-weight model that can write them, for tests of the formats end to end.
HARMONY_RETURN, HARMONY_CALL = "<|return|>", "<|call|>"
MARKER_TOKENS: tuple[str, ...] = (
    "<|start|>", "<|channel|>", "<|message|>", "<|constrain|>", "<|end|>", HARMONY_RETURN, HARMONY_CALL,
    "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "<|tool_call|>",
)  # fmt: skip

QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
GGUF_PRE_TOKENIZER = {"llama": "gpt-2", "qwen2": "qwen2"}  # tokenizer.ggml.pre per arch
_TOKENIZER_CLASS = {"llama": "PreTrainedTokenizerFast", "qwen2": "Qwen2Tokenizer"}

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True, slots=True)
class TinyTokenizer:
    tokens: tuple[str, ...]  # id -> token text (byte-level alphabet for normal tokens)
    merges: tuple[Pair, ...]
    num_normal: int  # tokens[:num_normal] are bytes + merges; the rest are special

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def token_id(self, token: str) -> int:
        return self.tokens.index(token)

    @property
    def endoftext_id(self) -> int:
        return self.token_id(ENDOFTEXT)

    @property
    def im_start_id(self) -> int:
        return self.token_id(IM_START)

    @property
    def im_end_id(self) -> int:
        return self.token_id(IM_END)

    @property
    def special_ids(self) -> range:
        return range(self.num_normal, self.vocab_size)


@lru_cache(maxsize=2)
def build_tokenizer(markers: bool = False) -> TinyTokenizer:
    """Learn the vocabulary from the embedded corpus (pure function of the corpus; ~0.1 s). markers: with
    MARKER_TOKENS after the ChatML ones."""
    bpe = learn_bpe(CORPUS, NUM_MERGES)
    specials = (*SPECIAL_TOKENS, *MARKER_TOKENS) if markers else SPECIAL_TOKENS
    return TinyTokenizer(
        tokens=(*bpe.tokens, *specials), merges=tuple(bpe.merges), num_normal=len(bpe.tokens)
    )


def _added_token(content: str, token_id: int | None = None) -> dict[str, Any]:
    head = {} if token_id is None else {"id": token_id}
    return head | {
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def _pre_tokenizer(arch: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(normalizer, pre_tokenizer) of tokenizer.json for ``arch``."""
    if arch == "llama":
        return None, {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": True,
        }
    split = {
        "type": "Split",
        "pattern": {"Regex": QWEN2_PRETOKENIZE_REGEX},
        "behavior": "Isolated",
        "invert": False,
    }
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {"type": "NFC"}, {"type": "Sequence", "pretokenizers": [split, byte_level]}


def tokenizer_json(tok: TinyTokenizer, arch: str) -> dict[str, Any]:
    """The ``tokenizer.json`` document (tokenizers' serialization format)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    normalizer, pre_tokenizer = _pre_tokenizer(arch)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(tok.tokens[i], i) for i in tok.special_ids],
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tok.tokens[: tok.num_normal])},
            "merges": [f"{a} {b}" for a, b in tok.merges],
        },
    }


def tokenizer_config_json(tok: TinyTokenizer, arch: str) -> dict[str, Any]:
    """``tokenizer_config.json``: special-token roles, the chat template, no BOS."""
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): _added_token(tok.tokens[i]) for i in tok.special_ids},
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": _TOKENIZER_CLASS[arch],
        "unk_token": None,
    }


def dumps(doc: dict[str, Any]) -> bytes:
    """Stable JSON bytes (insertion order kept, UTF-8, trailing newline)."""
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
