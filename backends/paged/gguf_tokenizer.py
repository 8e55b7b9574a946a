"""A GGUF file's vocabulary as the engine's Tokenizer, splitting text exactly as llama.cpp does.

llama.cpp (the dev profile) tokenizes from the GGUF's metadata alone: the model type (`gpt2`: byte-level
BPE, `llama`: SentencePiece), the tokens with their types, BPE merges or SentencePiece scores, and a
pre-tokenizer *name* (`tokenizer.ggml.pre`) that selects regexes hard-coded in llama.cpp's llama-vocab.cpp.
Those regexes are restated here (in the original tokenizers' own spelling) for the names whose behaviour is
known, so one file tokenizes the same on both profiles. Any other vocabulary is refused at load, naming
what is not supported, rather than served with a near-miss tokenization.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers

from backends.chat_template import ChatTemplate
from backends.paged.gguf_file import GGUFValues, read_gguf_metadata
from backends.paged.model_config import UnsupportedModelError
from backends.paged.tokenizer import Tokenizer, gpt2_unicode_to_byte

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEEPSEEK_PUNCTUATION = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LETTERS = (
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
    "\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf"
    "\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d"
    "\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4"
    "\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17"
    "\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)


@dataclass(frozen=True, slots=True)
class PreTokenizer:
    """What llama.cpp does for one `tokenizer.ggml.pre` name: regexes applied in turn, each splitting
    every piece the previous ones left into matches and the text between them."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a pre-token that is itself a token is not merged from its parts
    add_bos: bool = False  # the default when the file has no tokenizer.ggml.add_bos_token


_LLAMA3_PRE = PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_STARCODER_PRE = PreTokenizer((r"\p{N}", _GPT2))
# Only names whose regexes are checked against a real vocabulary's expected ids (tests/test_gguf_tokenizer.py)
# or share one checked set exactly. Mistral's tekken, for one, is not here: llama.cpp approximates its
# upper/lower-case classes outside ASCII, so neither side could be made exact for every text.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral"), _LLAMA3_PRE),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizer((_LLAMA3,))),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), PreTokenizer((_QWEN2,))),
    "qwen35": PreTokenizer((_QWEN35,)),
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais"), PreTokenizer((_GPT2,))),
    **dict.fromkeys(("starcoder", "refact", "command-r", "smollm", "codeshell"), _STARCODER_PRE),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]")),
    "deepseek-llm": PreTokenizer(
        ("[\r\n]", _DEEPSEEK_LETTERS, _DEEPSEEK_PUNCTUATION, "\\s+$", _CJK, r"\p{N}+")
    ),
    "deepseek-coder": PreTokenizer(("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}")),
}

# llama-vocab.cpp finds these tokens by their text when the metadata does not name them, and makes each a
# control token (rendered as nothing, never split from text).
_FOUND_BY_TEXT = {
    "eot": (
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
        "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
    ),
    "eom": ("<|eom_id|>",),
    "fim_pre": (
        "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
        "<|code_prefix|>", "<|prefix|>",
    ),
    "fim_suf": (
        "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
        "<|code_suffix|>", "<|suffix|>",
    ),
    "fim_mid": (
        "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
        "<|code_middle|>", "<|middle|>",
    ),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}  # fmt: skip
# ... and ends generation on these, on eos, eot and eom, and on the fill-in-the-middle pad and separators.
_EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>",
    "[e~[",
)  # fmt: skip
_EOG_ROLES = ("eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep")


class UnsupportedVocabularyError(UnsupportedModelError):
    """The GGUF's vocabulary is of a kind this engine cannot tokenize exactly as llama.cpp does."""


@dataclass(frozen=True, slots=True)
class GGUFVocab:
    model: str  # tokenizer.ggml.model
    pre: str | None
    tokens: list[str]
    types: list[int]  # as llama.cpp treats them: tokens it recognises by their text are control tokens
    roles: dict[str, int]  # bos, eos, eot, ... -> token id
    values: GGUFValues

    @property
    def name(self) -> str:
        return str(self.values.get("general.name", ""))


def _read_vocab(path: Path) -> GGUFVocab:
    values = read_gguf_metadata(path, prefixes=("tokenizer.", "general."))
    model = values.get("tokenizer.ggml.model")
    tokens = values.get("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise UnsupportedVocabularyError(f"{path.name} has no tokenizer (tokenizer.ggml.model / tokens)")
    tokens = [text or f"[EMPTY_{i}]" for i, text in enumerate(tokens)]  # as llama.cpp names empty ones
    if len(set(tokens)) != len(tokens):
        raise UnsupportedVocabularyError(
            f"{path.name}: the vocabulary lists a token twice (llama.cpp refuses it)"
        )
    types = values.get("tokenizer.ggml.token_type")
    types = [int(t) for t in types] if types is not None else [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise UnsupportedVocabularyError(f"{path.name}: {len(types)} token types for {len(tokens)} tokens")
    roles = _special_roles(str(model), tokens, types, values)
    pre = values.get("tokenizer.ggml.pre")
    return GGUFVocab(str(model), None if pre is None else str(pre), tokens, types, roles, values)


_DEFAULT_IDS = {"llama": {"bos": 1, "eos": 2}, "gpt2": {"bos": 11, "eos": 11}}  # llama.cpp's, odd as they are
_OLD_KEYS = {"fim_pre": "prefix", "fim_suf": "suffix", "fim_mid": "middle"}


def _special_roles(model: str, tokens: list[str], types: list[int], values: GGUFValues) -> dict[str, int]:
    """Which token is bos, eos, eot, ... as llama.cpp decides: the id in the metadata, else llama.cpp's
    default id, else (eot, eom, fill-in-the-middle) a token with a known text. Updates `types` as llama.cpp
    does: tokens recognised by their text become control tokens."""
    ids = {text: i for i, text in enumerate(tokens)}
    roles: dict[str, int] = {}
    for role in ("bos", "eos", *_FOUND_BY_TEXT):
        value = values.get(f"tokenizer.ggml.{role}_token_id")
        if value is None and role in _OLD_KEYS:
            value = values.get(f"tokenizer.ggml.{_OLD_KEYS[role]}_token_id")
        if value is None or not 0 <= int(value) < len(tokens):
            value = _DEFAULT_IDS.get(model, {}).get(role)
        if value is None:
            value = next((ids[text] for text in _FOUND_BY_TEXT.get(role, ()) if text in ids), None)
            if value is not None:
                types[value] = CONTROL
        if value is not None and 0 <= int(value) < len(tokens):
            roles[role] = int(value)
    for text in _EOG_TEXTS:
        if text in ids:
            types[ids[text]] = CONTROL
    # llama.cpp's gpt-oss rule: harmony's structure tokens are written as text (user-defined), and where
    # a turn ends on <|return|> / <|call|> (Solar Open: <|calls|> / <|flush|>), <|end|> ends a message only
    for text in (*_HARMONY_TEXT, *((_HARMONY_END,) if _harmony_end_is_text(ids) else ())):
        if text in ids:
            types[ids[text]] = USER_DEFINED
    return roles


_HARMONY_TEXT = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")
_HARMONY_END = "<|end|>"


def _harmony_end_is_text(ids: dict[str, int]) -> bool:
    ends = {"<|return|>", "<|call|>"} <= ids.keys() or {"<|calls|>", "<|flush|>"} <= ids.keys()
    return ends and _HARMONY_END in ids


def _added_tokens(vocab: GGUFVocab) -> list[AddedToken]:
    """Control and unknown tokens are special (never text); user-defined ones are text matched whole.

    llama.cpp matches both in the raw text before splitting the rest; Phi-3's converter relies on its
    special tokens swallowing the whitespace after them.
    """
    phi3 = "phi-3" in vocab.name.lower() or "phi3" in vocab.name.lower()
    added = []
    for text, kind in zip(vocab.tokens, vocab.types, strict=True):
        if kind in (CONTROL, UNKNOWN, USER_DEFINED):
            rstrip = phi3 and text not in ("<unk>", "<s>", "<|endoftext|>")
            added.append(AddedToken(text, special=kind != USER_DEFINED, normalized=False, rstrip=rstrip))
    return added


def _merge_pair(merge: str, path: Path) -> tuple[str, str]:
    cut = merge.find(" ", 1)  # as llama.cpp reads a merge: cut at the first space after the first character
    if cut < 0:
        raise UnsupportedVocabularyError(f"{path.name}: malformed BPE merge {merge!r} (no space)")
    return merge[:cut], merge[cut + 1 :]


def _bpe_model(vocab: GGUFVocab, path: Path) -> tuple[tokenizers.Tokenizer, PreTokenizer]:
    if vocab.pre is None or vocab.pre == "default":
        raise UnsupportedVocabularyError(
            f"{path.name}: the BPE vocabulary names no pre-tokenizer (tokenizer.ggml.pre "
            f"{vocab.pre!r}); llama.cpp falls back to a generic split that matches no original tokenizer. "
            "Convert the model again with a current llama.cpp."
        )
    pre = PRE_TOKENIZERS.get(vocab.pre)
    if pre is None:
        raise UnsupportedVocabularyError(
            f"{path.name}: pre-tokenizer {vocab.pre!r} (tokenizer.ggml.pre) is not supported by the paged "
            f"engine (supported: {', '.join(sorted(PRE_TOKENIZERS))}); use the llama.cpp backend"
        )
    merges = vocab.values.get("tokenizer.ggml.merges")
    if not merges:
        raise UnsupportedVocabularyError(f"{path.name}: the BPE vocabulary has no tokenizer.ggml.merges")
    pairs = [_merge_pair(m, path) for m in merges]
    ids = {text: i for i, text in enumerate(vocab.tokens)}
    # tokenizers panics on a merge of or into a non-token; llama.cpp would split its result into bytes
    if bad := next(((a, b) for a, b in pairs if a not in ids or b not in ids or a + b not in ids), None):
        merge = " ".join(bad)
        raise UnsupportedVocabularyError(f"{path.name}: BPE merge {merge!r} is not of two tokens into one")
    tok = tokenizers.Tokenizer(models.BPE(ids, pairs, ignore_merges=pre.ignore_merges))
    splits = [pre_tokenizers.Split(tokenizers.Regex(r), behavior="isolated") for r in pre.regexes]
    tok.pre_tokenizer = pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok, pre


def _spm_merges(vocab: GGUFVocab) -> list[tuple[str, str]]:
    """SentencePiece merges the adjacent pair whose concatenation is the highest-scoring token; as BPE
    merges, that is every split of every token into two tokens, ranked by the whole token's score."""
    scores = vocab.values.get("tokenizer.ggml.scores")
    if scores is None:
        raise UnsupportedVocabularyError("the SentencePiece vocabulary has no tokenizer.ggml.scores")
    ids = {text: i for i, text in enumerate(vocab.tokens)}
    ranked = []
    for whole, whole_id in ids.items():
        for cut in range(1, len(whole)):
            left, right = whole[:cut], whole[cut:]
            if left in ids and right in ids:
                ranked.append((-float(scores[whole_id]), whole_id, ids[left], ids[right], left, right))
    ranked.sort()  # best score first; llama.cpp breaks ties by position, which a rank cannot express
    return [(left, right) for *_, left, right in ranked]


def _spm_model(vocab: GGUFVocab, path: Path) -> tokenizers.Tokenizer:
    if vocab.values.get("tokenizer.ggml.remove_extra_whitespaces", False):
        raise UnsupportedVocabularyError(f"{path.name}: remove_extra_whitespaces is not supported")
    ids = {text: i for i, text in enumerate(vocab.tokens)}
    unk = next((t for t, k in zip(vocab.tokens, vocab.types, strict=True) if k == UNKNOWN), None)
    model = models.BPE(ids, _spm_merges(vocab), unk_token=unk, fuse_unk=True, byte_fallback=True)
    tok = tokenizers.Tokenizer(model)
    steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", "▁")]
    if vocab.values.get("tokenizer.ggml.add_space_prefix", True):  # after each special token, as llama.cpp
        steps.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


@cache
def _byte_level_table() -> dict[int, str]:
    """str.translate table from GPT-2's byte stand-ins to the bytes they stand for (as latin-1 chars);
    other characters below 256 become their own UTF-8 bytes, anything else is left for encode to refuse."""
    table = {ord(ch): chr(b) for ch, b in gpt2_unicode_to_byte().items()}
    for cp in range(256):
        table.setdefault(cp, chr(cp).encode().decode("latin-1"))
    return table


def _byte_level_bytes(text: str) -> bytes:
    try:
        return text.translate(_byte_level_table()).encode("latin-1")
    except UnicodeEncodeError:  # a character that is no byte's stand-in: llama.cpp keeps it as text
        u2b = gpt2_unicode_to_byte()
        return b"".join(bytes([u2b[ch]]) if ch in u2b else ch.encode() for ch in text)


def _token_bytes(vocab: GGUFVocab, size: int) -> list[bytes]:
    """What llama.cpp's token_to_piece gives without special tokens: control/unknown/unused tokens
    nothing, user-defined ones their text, byte tokens their byte, others their text unescaped."""
    table = [b""] * max(size, len(vocab.tokens))
    byte_level = vocab.model == "gpt2"
    for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.types, strict=True)):
        if kind == NORMAL:
            table[i] = _byte_level_bytes(text) if byte_level else text.replace("▁", " ").encode()
        elif kind == USER_DEFINED:
            table[i] = text.encode()
        elif kind == BYTE and len(text) == 6 and text.startswith("<0x"):
            table[i] = bytes([int(text[3:5], 16)])
    return table


def _eog_ids(vocab: GGUFVocab) -> tuple[int, ...]:
    by_role = [vocab.roles[role] for role in _EOG_ROLES if role in vocab.roles]
    ids = {text: i for i, text in enumerate(vocab.tokens)}
    dropped = (_HARMONY_END,) if _harmony_end_is_text(ids) else ()
    by_text = [i for i, text in enumerate(vocab.tokens) if text in _EOG_TEXTS]
    return tuple(dict.fromkeys(i for i in (*by_role, *by_text) if vocab.tokens[i] not in dropped))


def tokenizer_from_gguf(path: Path, vocab_size: int) -> Tokenizer:
    """The tokenizer of a GGUF file; vocab_size: the model's embedding rows (may exceed the token list).

    Raises UnsupportedVocabularyError for a vocabulary that cannot be tokenized as llama.cpp does.
    """
    vocab = _read_vocab(path)
    if vocab.model == "gpt2":
        tok, pre = _bpe_model(vocab, path)
        default_add_bos = pre.add_bos
    elif vocab.model == "llama":
        tok, default_add_bos = _spm_model(vocab, path), True
    else:
        raise UnsupportedVocabularyError(
            f"{path.name}: tokenizer model {vocab.model!r} (tokenizer.ggml.model) is not supported by the "
            "paged engine (supported: gpt2 = byte-level BPE, llama = SentencePiece); "
            "use the llama.cpp backend"
        )
    if vocab.values.get("tokenizer.ggml.add_eos_token", False):
        raise UnsupportedVocabularyError(
            f"{path.name}: tokenizer.ggml.add_eos_token (an end-of-sequence token after every prompt) is not "
            "supported by the paged engine"
        )
    added = _added_tokens(vocab)
    tok.add_special_tokens([t for t in added if t.special])
    tok.add_tokens([t for t in added if not t.special])
    bos_id, eos_id = vocab.roles.get("bos"), vocab.roles.get("eos")
    add_bos = bool(vocab.values.get("tokenizer.ggml.add_bos_token", default_add_bos)) and bos_id is not None
    source = vocab.values.get("tokenizer.chat_template")
    bos_text = vocab.tokens[bos_id] if bos_id is not None else ""
    eos_text = vocab.tokens[eos_id] if eos_id is not None else ""
    return Tokenizer(
        tokenizer=tok,
        token_bytes=_token_bytes(vocab, vocab_size),
        eos_ids=_eog_ids(vocab),
        bos_id=bos_id,
        add_bos=add_bos,
        chat_template=ChatTemplate(str(source), bos_text, eos_text) if source else None,
    )
