"""KV-cache blocks: a fixed pool, reference counts, and automatic prefix caching.

A full block's hash chains its parent's hash with its token ids (blake2b, 128 bits), so equal hashes
mean equal prefixes; the first block's parent is the sequence's cache salt (its LoRA adapter, if any), so
KV never crosses adapters. A hit is still checked against the stored tokens and parent hash. A block is
registered in the cache only once its keys/values have been computed, so a hit never reads a block
that another sequence is still filling. Freed cached blocks keep their hash in an LRU set and are only
evicted when a fresh block is needed and no uncached free block is left. Every operation is O(1) per
block touched.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from backends.paged.sequence import Sequence


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """The cached blocks that a sequence's tokens begin with (a small typed answer for the scheduler)."""

    block_ids: tuple[int, ...]
    num_reclaimed: int  # of those, blocks that sit in the evictable set and stop counting as free

    @property
    def num_blocks(self) -> int:
        return len(self.block_ids)


NO_MATCH = PrefixMatch((), 0)


def chain_hash(parent: bytes | None, token_ids: Iterable[int]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    if parent is not None:
        h.update(parent)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        # Per-block state as parallel lists (no object per block: nothing for the garbage collector to walk).
        self._ref = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks  # set while the block is the cache's entry
        self._parent: list[bytes | None] = [None] * num_blocks  # the parent hash, checked on a hit
        self._tokens: list[tuple[int, ...]] = [()] * num_blocks  # the token ids, checked on a hit
        # Uncached blocks with ref 0, as a stack: pop() hands out block 0 first.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, ref 0, least recently freed first
        self._cached: dict[bytes, int] = {}  # hash -> block id
        self.num_query_tokens = 0
        self.num_hit_tokens = 0

    # --- capacity ----------------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by running sequences (cached-but-free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    # --- prefix cache ------------------------------------------------------------------------------------
    def match_prefix(self, seq: Sequence) -> PrefixMatch:
        """Cached full blocks at the start of `seq` (never its last token: that one must be computed)."""
        if not self.enable_prefix_caching:
            return NO_MATCH
        bs = self.block_size
        hashes = self._hashes(seq, (seq.num_tokens - 1) // bs)
        found: list[int] = []
        reclaimed = 0
        parent = seq.cache_salt
        for i, h in enumerate(hashes):
            bid = self._cached.get(h)
            if bid is None:
                break
            if self._parent[bid] != parent or self._tokens[bid] != tuple(
                seq.token_ids[i * bs : (i + 1) * bs]
            ):
                break  # a hash collision: treat as a miss
            found.append(bid)
            reclaimed += self._ref[bid] == 0
            parent = h
        return PrefixMatch(tuple(found), reclaimed)

    def first_uncached_hash(self, seq: Sequence, match: PrefixMatch) -> bytes | None:
        """The hash of the first full block `seq` would compute itself (None: no such block, or no cache)."""
        index = match.num_blocks
        if not self.enable_prefix_caching or index >= (seq.num_tokens - 1) // self.block_size:
            return None
        return self._hashes(seq, index + 1)[index]

    def can_admit(self, seq: Sequence, match: PrefixMatch, num_new_tokens: int) -> bool:
        total = match.num_blocks * self.block_size + num_new_tokens
        needed = -(-total // self.block_size) - match.num_blocks
        return needed <= self.num_free_blocks - match.num_reclaimed

    def admit(self, seq: Sequence, match: PrefixMatch, num_new_tokens: int) -> None:
        """Give a sequence without blocks its cached prefix plus room for `num_new_tokens` more."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        for bid in match.block_ids:
            if self._ref[bid] == 0:
                del self._evictable[bid]
            self._ref[bid] += 1
        seq.block_table = list(match.block_ids)
        seq.num_computed_tokens = seq.num_cached_tokens = match.num_blocks * self.block_size
        seq.num_registered_blocks = match.num_blocks
        if self.enable_prefix_caching:
            self.num_query_tokens += seq.num_tokens
            self.num_hit_tokens += seq.num_cached_tokens
        self.append_slots(seq, num_new_tokens)

    def register_computed(self, seq: Sequence) -> None:
        """Offer the sequence's newly computed full blocks to the prefix cache."""
        num_full = seq.num_computed_tokens // self.block_size
        if not self.enable_prefix_caching or num_full <= seq.num_registered_blocks:
            return
        bs = self.block_size
        hashes = self._hashes(seq, num_full)
        for i in range(seq.num_registered_blocks, num_full):
            h = hashes[i]
            if h not in self._cached:
                bid = seq.block_table[i]
                self._hash[bid] = h
                self._parent[bid] = hashes[i - 1] if i else seq.cache_salt
                self._tokens[bid] = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                self._cached[h] = bid
        seq.num_registered_blocks = num_full

    def _hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        hashes, bs = seq.block_hashes, self.block_size
        for i in range(len(hashes), num_blocks):
            parent = hashes[i - 1] if i else seq.cache_salt
            hashes.append(chain_hash(parent, seq.token_ids[i * bs : (i + 1) * bs]))
        return hashes

    # --- allocation --------------------------------------------------------------------------------------
    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError("out of KV blocks: call can_append first")
        for _ in range(needed):
            seq.block_table.append(self._take_fresh())

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references, tail first so the tail is evicted before the shared prefix."""
        ref = self._ref
        for bid in reversed(seq.block_table):
            ref[bid] -= 1
            if ref[bid] == 0:
                if self._hash[bid] is not None:
                    self._evictable[bid] = None
                else:
                    self._free.append(bid)
        seq.block_table = []
        seq.num_registered_blocks = 0

    def _take_fresh(self) -> int:
        if self._free:
            bid = self._free.pop()
        else:
            bid, _ = self._evictable.popitem(last=False)
            h = self._hash[bid]
            assert h is not None
            del self._cached[h]
            self._hash[bid], self._parent[bid], self._tokens[bid] = None, None, ()
        self._ref[bid] = 1
        return bid

    # --- checks ------------------------------------------------------------------------------------------
    def check_invariants(self, holders: Iterable[Sequence]) -> None:
        """Every block is free, cached-evictable, or held by exactly as many sequences as its ref count."""
        refs = [0] * self.num_blocks
        for seq in holders:
            assert len(seq.block_table) == len(set(seq.block_table)), "a block twice in one table"
            assert len(seq.block_table) * self.block_size >= seq.num_computed_tokens
            for bid in seq.block_table:
                refs[bid] += 1
        free, evictable = set(self._free), set(self._evictable)
        assert len(free) == len(self._free), "a block twice in the free list"
        assert not free & evictable, "a block both free and evictable"
        for bid in range(self.num_blocks):
            ref, h = self._ref[bid], self._hash[bid]
            assert ref == refs[bid], f"block {bid}: ref {ref} != holders {refs[bid]}"
            if ref == 0:
                assert (bid in free) != (bid in evictable), f"block {bid} unreferenced but not free"
                assert (bid in evictable) == (h is not None)
            else:
                assert bid not in free and bid not in evictable
            if h is not None:
                assert self._cached.get(h) == bid
        for h, bid in self._cached.items():
            assert self._hash[bid] == h
