"""A checkpoint's tokenizer: encode, per-token bytes for streaming, end-of-sequence ids, chat template."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import tokenizers

from backends.base import ChatMessage
from backends.chat_template import ChatTemplate, ChatTemplateError

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@cache
def gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in character of every byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping: dict[str, int] = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + extra)] = b
            extra += 1
    return mapping


def _is_byte_level(spec: dict[str, Any]) -> bool:
    def mentions(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(mentions(v) for v in node.values())
        if isinstance(node, list):
            return any(mentions(v) for v in node)
        return False

    return mentions(spec.get("decoder")) or mentions(spec.get("pre_tokenizer"))


def _token_bytes_table(tok: tokenizers.Tokenizer, spec: dict[str, Any], size: int) -> list[bytes]:
    """Bytes each token id contributes to the output text; special tokens contribute nothing."""
    table = [b""] * size
    byte_level = _is_byte_level(spec)
    u2b = gpt2_unicode_to_byte()
    for piece, token_id in tok.get_vocab(with_added_tokens=False).items():
        if token_id >= size:
            continue
        if byte_level:
            if all(ch in u2b for ch in piece):
                table[token_id] = bytes(u2b[ch] for ch in piece)
            else:
                table[token_id] = piece.encode()
        elif m := _BYTE_FALLBACK.match(piece):
            table[token_id] = bytes([int(m.group(1), 16)])
        else:  # SentencePiece: '▁' stands for a space
            table[token_id] = piece.replace("▁", " ").encode()
    for token_id, added in tok.get_added_tokens_decoder().items():
        if token_id < size:
            table[token_id] = b"" if added.special else added.content.encode()
    return table


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as serialized AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


class Tokenizer:
    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        token_bytes: list[bytes],
        eos_ids: tuple[int, ...],
        bos_id: int | None,
        add_bos: bool,
        chat_template: ChatTemplate | None,
    ) -> None:
        self._tok = tokenizer
        self._token_bytes = token_bytes
        self.eos_ids = eos_ids
        self.bos_id = bos_id
        self._add_bos = add_bos
        self._chat_template = chat_template

    @classmethod
    def from_dir(cls, path: Path, vocab_size: int, model_eos_ids: tuple[int, ...] = ()) -> Tokenizer:
        spec = json.loads((path / "tokenizer.json").read_text())
        tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        tok_cfg = _read_json(path / "tokenizer_config.json")
        gen_cfg = _read_json(path / "generation_config.json")

        eos: list[int] = list(model_eos_ids)
        gen_eos = gen_cfg.get("eos_token_id")
        eos += gen_eos if isinstance(gen_eos, list) else ([] if gen_eos is None else [gen_eos])
        eos_text = _token_text(tok_cfg.get("eos_token"))
        if eos_text is not None and (eos_id := tok.token_to_id(eos_text)) is not None:
            eos.append(eos_id)
        bos_text = _token_text(tok_cfg.get("bos_token"))
        bos_id = tok.token_to_id(bos_text) if bos_text else None

        source = tok_cfg.get("chat_template")
        if isinstance(source, list):  # named templates: take "default"
            source = next(
                (t["template"] for t in source if t.get("name") == "default"), source[0]["template"]
            )
        if source is None and (path / "chat_template.jinja").exists():
            source = (path / "chat_template.jinja").read_text()
        template = ChatTemplate(source, bos_text or "", eos_text or "") if source else None
        return cls(
            tokenizer=tok,
            token_bytes=_token_bytes_table(tok, spec, max(vocab_size, tok.get_vocab_size())),
            eos_ids=tuple(dict.fromkeys(eos)),
            bos_id=bos_id,
            add_bos=bool(tok_cfg.get("add_bos_token", False)) and bos_id is not None,
            chat_template=template,
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Special-token text becomes the special token.

        add_special_tokens: add BOS where the model wants one (once: a template's own BOS text is not
        doubled); False for prompts rendered from a chat template, which carry their own.
        """
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self.bos_id is not None:
            if self._add_bos and (not ids or ids[0] != self.bos_id):
                ids.insert(0, self.bos_id)
            while len(ids) > 1 and ids[0] == ids[1] == self.bos_id:
                del ids[0]
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        return self._token_bytes[token_id] if 0 <= token_id < len(self._token_bytes) else b""

    def output_bytes(self, token_id: int, preserved: frozenset[int]) -> bytes:
        """What a generated token adds to the output: its bytes, or for a special token the request
        preserves (a tool-call marker its reader parses: backends.tools.markers) its text."""
        piece = self.token_bytes(token_id)
        if not piece and token_id in preserved:
            return self.special_bytes(token_id)
        return piece

    def special_bytes(self, token_id: int) -> bytes:
        """A special token's text (<|im_end|>), as decode_prompt writes it."""
        text = self._tok.id_to_token(token_id)
        return text.encode() if text is not None else b""

    def token_text(self, token_id: int) -> str:
        """One token on its own, for logprobs (a partial UTF-8 sequence shows as U+FFFD)."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def decode(self, token_ids: list[int]) -> str:
        return b"".join(self.token_bytes(t) for t in token_ids).decode("utf-8", errors="replace")

    def decode_prompt(self, token_ids: list[int]) -> str:
        """The inverse of encode: special tokens as their text, as Hugging Face decodes by default."""
        return self._tok.decode(token_ids, skip_special_tokens=False)

    @property
    def chat_template(self) -> ChatTemplate | None:
        return self._chat_template

    def apply_chat_template(self, messages: list[ChatMessage]) -> str:
        if self._chat_template is None:
            raise ChatTemplateError(
                "this model has no chat template (none in tokenizer_config.json, no chat_template.jinja); "
                "use /v1/completions"
            )
        return self._chat_template.render(messages, add_generation_prompt=True)
