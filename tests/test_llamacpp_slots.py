"""The dev backend's slot accounting (backends/llamacpp/slots.py), split and unified KV.

The KV memory here records what the pool asks of llama.cpp; what llama.cpp does with it (a copied stream
giving the same tokens as a fresh prefill) is tests/test_llamacpp_batching.py's, on real llama.cpp.
"""

from __future__ import annotations

from backends.llamacpp.slots import MIN_COPIED_TOKENS, SlotPool


class _RecordedMemory:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def remove(self, seq_id: int, start: int = 0) -> None:
        self.calls.append(("remove", seq_id, start))

    def copy(self, source: int, target: int, length: int) -> None:
        self.calls.append(("copy", source, target, length))


def _running(pool: SlotPool, prompt: list[int], need: int):
    placement = pool.place(prompt, need)
    assert placement is not None
    placement.slot.tokens = list(prompt)
    return placement


def test_split_slots_never_wait_for_each_others_cells():
    pool = SlotPool(_RecordedMemory(), sequences=2, cells=2048, shared=False)
    _running(pool, list(range(100)), need=1024)  # a whole stream's worth
    assert pool.place([7, 8, 9], need=1024) is not None
    assert pool.place([1, 2], need=8) is None  # no slot free: it waits


def test_unified_slots_wait_for_room_in_the_shared_pool():
    pool = SlotPool(_RecordedMemory(), sequences=2, cells=1024, shared=True)
    _running(pool, list(range(100)), need=1000)
    assert pool.place([7, 8, 9], need=100) is None
    assert pool.place([7, 8, 9], need=24) is not None


def test_split_copies_a_running_prefix_only_when_it_is_worth_a_stream_copy():
    memory = _RecordedMemory()
    pool = SlotPool(memory, sequences=4, cells=4 * 2048, shared=False)
    assert pool.min_copied == MIN_COPIED_TOKENS
    system = list(range(1000, 1000 + MIN_COPIED_TOKENS))
    _running(pool, [*system, 1, 2], need=64)
    short = pool.place([*system[:4], 9, 9], need=16)  # a chat header's worth in common: computed anew
    assert short is not None and short.reused == 0
    assert not any(call[0] == "copy" for call in memory.calls)
    long = pool.place([*system, 3, 4], need=64)
    assert long is not None and long.reused == len(system)
    assert ("copy", 0, long.slot.seq_id, len(system)) in memory.calls


def test_unified_shares_any_running_prefix():
    memory = _RecordedMemory()
    pool = SlotPool(memory, sequences=2, cells=1024, shared=True)
    _running(pool, [5, 6, 7, 8], need=16)
    placement = pool.place([5, 6, 9], need=16)
    assert placement is not None and placement.reused == 2
    assert ("copy", 0, placement.slot.seq_id, 2) in memory.calls


def test_long_streams_raise_the_shortest_copied_prefix():
    pool = SlotPool(_RecordedMemory(), sequences=2, cells=2 * 131072, shared=False)
    assert pool.min_copied == 131072 // 256
