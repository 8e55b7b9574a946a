"""A small, deterministic byte-level BPE learner (GPT-2 style).

Words come from the GPT-2 pre-tokenizer regex (``tokenizers``' ByteLevel pre-tokenizer, the same
one the HF tokenizer.json uses), already mapped to GPT-2's byte-to-unicode alphabet. Merges are
learned greedily: at each step the most frequent adjacent pair is merged; ties are broken by the
lexicographically smallest ``(left, right)`` pair, so the result depends only on the corpus text.
Once no pair occurs twice, merging continues on pairs that occur once (still deterministic).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache

Pair = tuple[str, str]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def byte_tokens() -> list[str]:
    """The 256 single-byte tokens, in byte order (token id == byte value)."""
    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


def pretokenize(text: str) -> list[str]:
    """Split ``text`` like the GPT-2 regex does and map each piece to the byte-level alphabet."""
    from tokenizers.pre_tokenizers import ByteLevel

    pre = ByteLevel(add_prefix_space=False, use_regex=True)
    return [piece for piece, _ in pre.pre_tokenize_str(text)]


@dataclass(frozen=True, slots=True)
class BpeVocab:
    tokens: list[str]  # id -> token string (byte-level alphabet); bytes first, then one per merge
    merges: list[Pair]  # in rank order


class _Learner:
    def __init__(self, word_counts: Counter[str]) -> None:
        ordered = sorted(word_counts.items())  # fixed order, independent of dict/hash details
        self.words: list[list[str]] = [list(w) for w, _ in ordered]
        self.freqs: list[int] = [c for _, c in ordered]
        self.pair_count: dict[Pair, int] = defaultdict(int)
        self.pair_where: dict[Pair, set[int]] = defaultdict(set)
        for idx, symbols in enumerate(self.words):
            self._add_pairs(idx, symbols)
        self.heap: list[tuple[int, Pair]] = [(-c, p) for p, c in self.pair_count.items()]
        heapq.heapify(self.heap)

    def _add_pairs(self, idx: int, symbols: list[str], sign: int = 1) -> set[Pair]:
        touched: set[Pair] = set()
        for pair in itertools.pairwise(symbols):
            self.pair_count[pair] += sign * self.freqs[idx]
            touched.add(pair)
            if sign > 0:
                self.pair_where[pair].add(idx)
        return touched

    def best_pair(self) -> Pair | None:
        while self.heap:
            neg, pair = self.heap[0]
            if self.pair_count.get(pair, 0) == -neg and -neg > 0:
                return pair
            heapq.heappop(self.heap)  # stale entry: its count changed since it was pushed
        return None

    def merge(self, pair: Pair) -> None:
        left, right = pair
        merged = left + right
        touched: set[Pair] = set()
        for idx in sorted(self.pair_where.pop(pair, set())):
            symbols = self.words[idx]
            touched |= self._add_pairs(idx, symbols, sign=-1)
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            self.words[idx] = out
            touched |= self._add_pairs(idx, out)
        self.pair_count.pop(pair, None)
        for p in sorted(touched):
            count = self.pair_count.get(p, 0)
            if count > 0:
                heapq.heappush(self.heap, (-count, p))
            else:
                self.pair_count.pop(p, None)
                self.pair_where.pop(p, None)


def learn_bpe(text: str, num_merges: int) -> BpeVocab:
    """Learn up to ``num_merges`` merges from ``text``; fewer if the corpus runs out of pairs."""
    learner = _Learner(Counter(pretokenize(text)))
    tokens = byte_tokens()
    seen = set(tokens)
    merges: list[Pair] = []
    while len(merges) < num_merges:
        pair = learner.best_pair()
        if pair is None:
            break
        learner.merge(pair)
        merges.append(pair)
        if pair[0] + pair[1] not in seen:  # can't repeat in practice, but keep ids unique regardless
            seen.add(pair[0] + pair[1])
            tokens.append(pair[0] + pair[1])
    return BpeVocab(tokens=tokens, merges=merges)
