"""Block accounting and scheduling, without a model: tokens are made up, the invariants are not."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from backends.base import FinishReason, SamplingParams
from backends.paged.block_manager import BlockManager, chain_hash
from backends.paged.config import EngineConfig
from backends.paged.scheduler import Scheduler
from backends.paged.sequence import IllegalTransition, Sequence, SequenceStatus

PARAMS = SamplingParams(max_tokens=8)


def _seq(rid: str, tokens: list[int], arrival: int = 0) -> Sequence:
    return Sequence(rid, list(tokens), PARAMS, arrival=arrival)


def _compute_all(bm: BlockManager, seq: Sequence) -> None:
    """Pretend the model computed every token of seq (it holds the blocks)."""
    seq.mark_computed(seq.num_uncomputed_tokens)
    bm.register_computed(seq)


def test_allocate_append_free():
    bm = BlockManager(num_blocks=4, block_size=4)
    seq = _seq("a", list(range(6)))
    match = bm.match_prefix(seq)
    assert match.num_blocks == 0 and bm.can_admit(seq, match, 6)
    bm.admit(seq, match, 6)
    assert len(seq.block_table) == 2 and bm.num_free_blocks == 2
    _compute_all(bm, seq)
    seq.start_running()
    for token in range(6, 9):
        seq.append_token(token)
        assert bm.can_append(seq, 1)
        bm.append_slots(seq, 1)
        _compute_all(bm, seq)
    assert len(seq.block_table) == 3
    bm.check_invariants([seq])
    bm.free(seq)
    assert bm.num_free_blocks == 4 and bm.usage == 0.0
    bm.check_invariants([])


def test_prefix_hit_shares_blocks_and_never_the_last_token():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = _seq("a", list(range(10)))
    bm.admit(a, bm.match_prefix(a), 10)
    _compute_all(bm, a)  # blocks [0..3], [4..7] are full and cached; [8, 9] is not
    b = _seq("b", [*range(8), 99])
    match = bm.match_prefix(b)
    assert match.num_blocks == 2 and match.num_reclaimed == 0
    bm.admit(b, match, 1)
    assert b.block_table[:2] == a.block_table[:2] and b.num_cached_tokens == 8
    bm.check_invariants([a, b])
    # A prompt that is exactly the cached blocks must still compute its last token: one block less.
    c = _seq("c", list(range(8)))
    assert bm.match_prefix(c).num_blocks == 1
    assert bm.num_hit_tokens == 8 and bm.num_query_tokens == 10 + 9


def test_freed_cached_blocks_are_evicted_lru_and_reclaimed():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = _seq("a", [1, 2, 3, 4, 5])
    bm.admit(a, bm.match_prefix(a), 5)
    _compute_all(bm, a)
    bm.free(a)
    assert bm.num_free_blocks == 4  # cached blocks count as free
    b = _seq("b", [1, 2, 3, 4, 9])
    match = bm.match_prefix(b)
    assert match.num_blocks == 2 and match.num_reclaimed == 2
    assert bm.can_admit(b, match, 1)
    bm.admit(b, match, 1)
    assert bm.num_free_blocks == 1
    bm.check_invariants([b])
    bm.free(b)
    # Take every block: the cached ones are evicted (their hashes forgotten) once the free list is empty.
    c = _seq("c", list(range(100, 108)))
    bm.admit(c, bm.match_prefix(c), 8)
    bm.check_invariants([c])
    assert bm.match_prefix(_seq("d", [1, 2, 3, 4, 5])).num_blocks == 0


def test_hash_collision_is_a_miss():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = _seq("a", [1, 2, 3])
    bm.admit(a, bm.match_prefix(a), 3)
    _compute_all(bm, a)
    b = _seq("b", [7, 8, 3])
    b.block_hashes.append(a.block_hashes[0])  # forge a colliding hash for a different block
    assert bm.match_prefix(b).num_blocks == 0


def test_chain_hash_depends_on_parent():
    assert chain_hash(None, [1, 2]) != chain_hash(chain_hash(None, [0]), [1, 2])
    assert chain_hash(None, [1, 2]) == chain_hash(None, (1, 2))


def test_sequence_transitions():
    seq = _seq("a", [1, 2])
    seq.start_running()
    seq.preempt()
    assert seq.status is SequenceStatus.PREEMPTED and seq.num_computed_tokens == 0
    seq.start_running()
    seq.finish(FinishReason.LENGTH)
    try:
        seq.start_running()
    except IllegalTransition:
        pass
    else:
        raise AssertionError("a finished sequence cannot run again")


def _scheduler(num_blocks: int, block_size: int, **kw) -> Scheduler:
    config = EngineConfig(block_size=block_size, num_kv_blocks=num_blocks, **kw)
    return Scheduler(config, BlockManager(num_blocks, block_size, config.enable_prefix_caching))


def _fake_step(sched: Scheduler, rng: random.Random, capacity: int) -> list[Sequence]:
    """schedule -> (no model) -> commit -> append a made-up token to each sampling sequence."""
    out = sched.schedule()
    total = sum(item.num_new_tokens for item in out.scheduled)
    assert total == out.num_batched_tokens <= sched.config.max_num_batched_tokens
    assert len(out.scheduled) <= sched.config.max_num_seqs
    assert len({id(item.seq) for item in out.scheduled}) == len(out.scheduled)
    sched.commit(out)
    finished = []
    for item in out.scheduled:
        seq = item.seq
        assert seq.status is SequenceStatus.RUNNING
        assert len(seq.block_table) * sched.block_manager.block_size >= seq.num_computed_tokens
        if item.samples:
            seq.append_token(rng.randrange(4))
            if seq.num_output_tokens >= seq.params.max_tokens or seq.num_tokens >= capacity:
                sched.finish(seq, FinishReason.LENGTH)
                finished.append(seq)
    return finished


def _check(sched: Scheduler, live: list[Sequence]) -> None:
    holders = [s for s in live if s.block_table]
    assert all(s.status is SequenceStatus.RUNNING for s in holders)
    sched.block_manager.check_invariants(holders)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 14), st.integers(1, 24), st.integers(1, 3)),
        st.tuples(st.just("step"), st.integers(1, 4), st.just(0), st.just(0)),
        st.tuples(st.just("abort"), st.integers(0, 50), st.just(0), st.just(0)),
    ),
    min_size=3,
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=ops,
    num_blocks=st.integers(3, 8),
    block_size=st.sampled_from([2, 4]),
    budget=st.integers(1, 24),
    max_seqs=st.integers(1, 6),
    caching=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_block_accounting_property(ops, num_blocks, block_size, budget, max_seqs, caching, seed):
    rng = random.Random(seed)
    sched = _scheduler(
        num_blocks,
        block_size,
        max_num_batched_tokens=budget,
        max_num_seqs=max_seqs,
        enable_prefix_caching=caching,
        max_waiting_requests=8,
    )
    capacity = num_blocks * block_size
    live: list[Sequence] = []
    arrivals = 0
    for op, a, b, count in ops:
        for _ in range(count if op == "add" and not sched.is_full else 0):
            # Prompts from a 4-token alphabet with a shared start, so prefixes (and hits) repeat.
            prompt = ([1, 2, 3, 1, 2, 3, 0, 0] + [rng.randrange(4) for _ in range(a)])[: min(a, capacity - 1)]
            seq = Sequence(f"s{arrivals}", prompt, SamplingParams(max_tokens=b), arrival=arrivals)
            arrivals += 1
            sched.add(seq)
            live.append(seq)
            if sched.is_full:
                break
        if op == "step":
            for _ in range(a):
                for seq in _fake_step(sched, rng, capacity):
                    live.remove(seq)
                _check(sched, live)
        elif op == "abort" and live:
            seq = live.pop(a % len(live))
            sched.finish(seq, FinishReason.ABORT)
        _check(sched, live)
    # Everything still live runs to completion: no deadlock, no leak.
    for _ in range(2000):
        if not live:
            break
        for seq in _fake_step(sched, rng, capacity):
            live.remove(seq)
        _check(sched, live)
    assert not live, "the scheduler stopped making progress"
    event(f"preempted: {sched.num_preemptions > 0}")
    assert not sched.has_work()
    bm = sched.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    bm.check_invariants([])


def test_preemption_picks_latest_arrival_and_requeues_it_first():
    sched = _scheduler(4, 2, max_num_batched_tokens=64)
    # different prompts: identical ones would share a block (and the second would wait a step for it)
    seqs = [
        Sequence(f"s{i}", [1 + 3 * i, 2 + 3 * i, 3], SamplingParams(max_tokens=50), arrival=i)
        for i in range(2)
    ]
    for seq in seqs:
        sched.add(seq)
    rng = random.Random(0)
    _fake_step(sched, rng, 8)  # both prefilled (3 tokens, 2 blocks each): the pool is full
    assert sched.block_manager.num_free_blocks == 0
    _fake_step(sched, rng, 8)  # token 4 still fits in each second block
    assert sched.num_preemptions == 0
    _fake_step(sched, rng, 8)  # s0 needs a third block: s1 (latest) is preempted
    assert sched.num_preemptions == 1
    assert seqs[1].status is SequenceStatus.PREEMPTED and sched.waiting[0] is seqs[1]
    assert seqs[0].status is SequenceStatus.RUNNING


def test_new_requests_join_a_running_batch_and_decodes_come_first():
    sched = _scheduler(64, 4, max_num_batched_tokens=10)
    first = Sequence("first", [1] * 6, SamplingParams(max_tokens=50), arrival=0)
    sched.add(first)
    rng = random.Random(0)
    _fake_step(sched, rng, 256)
    second = Sequence("second", [2] * 20, SamplingParams(max_tokens=50), arrival=1)
    sched.add(second)
    out = sched.schedule()
    assert [(i.seq.request_id, i.num_new_tokens) for i in out.scheduled] == [("first", 1), ("second", 9)]
    assert out.num_decodes == 1
    sched.commit(out)
    first.append_token(0)
    out = sched.schedule()  # the rest of the long prompt continues while "first" keeps decoding
    assert [(i.seq.request_id, i.num_new_tokens) for i in out.scheduled] == [("first", 1), ("second", 9)]
