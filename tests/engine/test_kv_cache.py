"""KV blocks without a model (pure Python, fast; part of `make mutation`): the block pool's
reference counts, free queue and hash table, the prefix cache's hits across time, and the
scheduler's admission by blocks and preemption. The randomized test at the end runs 1,000
requests with random aborts through a pool small enough to preempt all the time, and checks
after every step that no block leaked and the hash table is consistent; the check itself is
shown to catch a pool whose eviction forgets a block."""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import pytest

from app.engine.core.block_pool import Block, BlockPool
from app.engine.core.block_table import BlockTableArray
from app.engine.core.kv_cache import KVCacheManager
from app.engine.core.scheduler import Scheduler
from app.engine.core.sequence import FinishReason, Sequence, Status
from app.engine.protocol import SamplingParams

EOS = 50256
BS = 4  # tokens per block in these tests


def _seq(rid: str, tokens: list[int], max_tokens: int = 4, **kw: object) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens, **kw)  # type: ignore[arg-type]
    return Sequence(rid, list(tokens), len(tokens), params, 0.0)


def _scheduler(
    blocks: int, max_num_seqs: int = 8, cache: bool = True, budget: int = 64
) -> Scheduler:
    return Scheduler(max_num_seqs, budget, KVCacheManager(blocks, BS, cache), EOS, 64)


def _run(s: Scheduler, token: int = 7) -> list[Sequence]:
    batch = s.schedule(0.0)
    sampled = [token for seq, n in batch.items if batch.samples(seq, n)]
    done = s.postprocess(batch, sampled)
    s.kv.check(s.running)
    return done


def _finish_all(s: Scheduler) -> None:
    for _ in range(1000):
        if not s.num_unfinished:
            return
        _run(s)
    raise AssertionError("did not finish")


# ---- the pool ------------------------------------------------------------------------------


def test_pool_hands_out_blocks_and_takes_them_back() -> None:
    pool = BlockPool(3)
    a, b = pool.allocate(), pool.allocate()
    assert (a.block_id, b.block_id) == (1, 2)  # block 0 is the runner's scratch block
    assert pool.num_free == 1 and pool.num_used == 2
    pool.release([b, a])
    assert pool.num_free == 3
    pool.check([])
    with pytest.raises(RuntimeError, match="released more often"):
        pool.release([a])


def test_pool_refuses_to_overcommit() -> None:
    pool = BlockPool(1)
    pool.allocate()
    with pytest.raises(RuntimeError, match="no free KV block"):
        pool.allocate()


def test_cached_blocks_are_evicted_last_and_least_recently_freed_first() -> None:
    pool = BlockPool(3)
    old, new, plain = pool.allocate(), pool.allocate(), pool.allocate()
    pool.cache(old, None, (1, 2))
    pool.cache(new, None, (3, 4))
    pool.release([old])
    pool.release([new])
    pool.release([plain])  # nothing cached: reused first
    assert pool.allocate() is plain
    assert pool.allocate() is old  # freed before `new`: evicted first, its hash forgotten
    assert pool.lookup(None, (1, 2)) is None and pool.lookup(None, (3, 4)) is new
    pool.check([[old.block_id], [plain.block_id]])


def test_a_hit_on_a_free_block_takes_it_out_of_the_free_queue() -> None:
    pool = BlockPool(2)
    block = pool.allocate()
    pool.cache(block, None, (5, 6))
    pool.release([block])
    assert pool.num_free == 2
    hit = pool.lookup(None, (5, 6))
    assert hit is block
    pool.touch(hit)
    assert pool.num_free == 1 and block.ref_count == 1
    pool.check([[block.block_id]])


def test_lookup_checks_tokens_and_parent_not_just_the_hash() -> None:
    pool = BlockPool(2)
    block = pool.allocate()
    h = pool.cache(block, None, (1, 2))
    assert pool.lookup(h, (1, 2)) is None  # same tokens after another prefix: a miss
    block.tokens = (9, 9)  # as if another content had hashed the same: read as a miss
    assert pool.lookup(None, (1, 2)) is None


# ---- the manager and the scheduler -----------------------------------------------------------


def test_admission_takes_every_block_of_the_prompt() -> None:
    s = _scheduler(blocks=8)
    seq = _seq("a", list(range(100, 110)))  # 10 tokens: 3 blocks of 4
    s.add(seq)
    batch = s.schedule(0.0)
    assert batch.items == [(seq, 10)] and len(seq.block_table) == 3
    assert s.kv.num_used == 3


def test_a_later_request_reuses_the_cached_prefix_of_a_finished_one() -> None:
    s = _scheduler(blocks=16)
    system = list(range(100, 112))  # three full blocks
    first = _seq("first", [*system, 1, 2], max_tokens=1)
    s.add(first)
    _finish_all(s)
    assert first.is_finished and s.kv.num_used == 0  # blocks free, still cached
    full = _seq("full", [*system, 1, 2])  # the same prompt: 12 of its 14 tokens cached
    partly = _seq("partly", system[:8] + [50] * 6)  # two blocks in common
    miss = _seq("miss", [60] * 14)
    for seq in (full, partly, miss):
        s.add(seq)
    batch = s.schedule(0.0)
    assert [(q.request_id, n) for q, n in batch.items] == [("full", 2), ("partly", 6), ("miss", 14)]
    assert (full.num_cached_tokens, partly.num_cached_tokens, miss.num_cached_tokens) == (12, 8, 0)
    assert s.kv.num_queries == 14 * 4 and s.kv.num_hits == 20


def test_the_last_prompt_token_is_always_computed() -> None:
    s = _scheduler(blocks=16)
    prompt = list(range(100, 108))  # exactly two blocks
    s.add(_seq("a", prompt, max_tokens=1))
    _finish_all(s)
    again = _seq("b", prompt)
    s.add(again)
    batch = s.schedule(0.0)
    assert batch.items == [(again, 4)]  # block 2 holds the last token: computed, for logits
    assert again.num_cached_tokens == 4


def test_generated_tokens_are_cached_for_the_next_turn() -> None:
    """A chat's next turn sends the whole conversation: the previous answer's blocks hit too."""
    s = _scheduler(blocks=16)
    turn1 = _seq("t1", list(range(100, 106)), max_tokens=6, ignore_eos=True)
    s.add(turn1)
    _finish_all(s)
    turn2 = _seq("t2", [*turn1.token_ids, 1, 2, 3])  # 12 tokens of history + 3 new
    s.add(turn2)
    s.schedule(0.0)
    assert turn2.num_cached_tokens == 8  # prompt and answer: the two full blocks computed


def test_prompt_logprobs_and_a_disabled_cache_take_no_hits() -> None:
    for cache, kw in [(True, {"prompt_logprobs": 0}), (False, {})]:
        s = _scheduler(blocks=16, cache=cache)
        s.add(_seq("a", list(range(100, 110)), max_tokens=1))
        _finish_all(s)
        b = _seq("b", list(range(100, 110)), **kw)
        s.add(b)
        assert s.schedule(0.0).items == [(b, 10)]
        assert b.num_cached_tokens == 0


def test_a_sibling_waits_for_the_prefix_in_flight_then_reuses_it() -> None:
    s = _scheduler(blocks=16)
    first, second = _seq("a", list(range(100, 110))), _seq("b", list(range(100, 110)))
    s.add(first)
    s.add(second)
    batch = s.schedule(0.0)
    assert batch.items == [(first, 10)]  # b waits: a computes those blocks in this step
    s.postprocess(batch, [7])
    batch = s.schedule(0.0)
    assert (second, 2) in batch.items and second.num_cached_tokens == 8


def test_admission_keeps_the_watermark_while_others_run() -> None:
    s = _scheduler(blocks=200)  # watermark: 2 blocks
    running = _seq("r", [5] * 2, max_tokens=50)
    s.add(running)
    _run(s)
    big = _seq("big", [6] * (197 * BS))  # 199 free: 197 leave the 2 of the watermark
    s.add(big)
    s.schedule(0.0)
    assert big.status is Status.RUNNING
    s2 = _scheduler(blocks=200)
    s2.add(_seq("r", [5] * 2, max_tokens=50))
    _run(s2)
    too_big = _seq("big", [6] * (198 * BS))  # would leave 1 < 2 free
    s2.add(too_big)
    s2.schedule(0.0)
    assert too_big.status is Status.WAITING


def test_out_of_blocks_preempts_the_newest_and_recomputes_it_later() -> None:
    # 4 blocks of 4: two sequences of 8 prompt tokens hold 2 blocks each, then both need a third.
    s = _scheduler(blocks=4)
    old = _seq("old", [10] * 8, max_tokens=5, ignore_eos=True)
    new = _seq("new", [20] * 8, max_tokens=5, ignore_eos=True)
    s.add(old)
    s.add(new)
    _run(s)  # both prefilled, one token each: the 9th token needs a third block
    assert s.kv.pool.num_free == 0
    batch = s.schedule(0.0)
    assert batch.items == [(old, 1)]  # old grew into new's freed blocks
    assert new.status is Status.WAITING and list(s.waiting) == [new] and not new.block_table
    assert new.output_ids == [7] and s.num_preemptions == 1  # its token is kept
    s.postprocess(batch, [7])
    _finish_all(s)
    assert old.output_ids == [7] * 5 and new.output_ids == [7] * 5
    assert old.finish_reason is new.finish_reason is FinishReason.LENGTH
    assert s.kv.num_used == 0


def test_a_lone_sequence_is_never_preempted_by_itself() -> None:
    s = _scheduler(blocks=16)  # 64 tokens: max_model_len fits
    seq = _seq("solo", [3] * 10, max_tokens=54, ignore_eos=True)
    s.add(seq)
    _finish_all(s)
    assert seq.num_output_tokens == 54 and s.num_preemptions == 0


# ---- 1,000 random requests -------------------------------------------------------------------


def _drive(s: Scheduler, seed: int, requests: int = 1000) -> None:
    """Random prompts from a few shared openings (so the cache hits, misses and evicts), random
    aborts, and a pool so small that sequences are preempted all the time; the pool is checked
    against the sequences after every step."""
    rng = random.Random(seed)
    openings = [[rng.randrange(100, 50000) for _ in range(rng.randint(0, 20))] for _ in range(5)]
    live: list[Sequence] = []
    submitted = 0
    while submitted < requests or s.num_unfinished:
        for _ in range(rng.randint(0, 3)):
            if submitted < requests:
                prompt = rng.choice(openings) + [
                    rng.randrange(100, 50000) for _ in range(rng.randint(1, 12))
                ]
                seq = _seq(f"r{submitted}", prompt, rng.randint(1, 16), stop_token_ids=(3,))
                s.add(seq)
                live.append(seq)
                submitted += 1
        if live and rng.random() < 0.2:
            s.abort(rng.choice(live))
        _run(s, token=rng.choice([3, 4, 5, 6, 7, 8, 9, 10]))
        live = [seq for seq in live if not seq.is_finished]


@pytest.mark.parametrize("cache", [True, False], ids=["prefix-cache", "no-cache"])
def test_1000_random_requests_with_aborts_and_preemptions_leak_nothing(cache: bool) -> None:
    s = _scheduler(blocks=16, max_num_seqs=6, cache=cache, budget=48)  # 64 tokens for 6 seqs
    _drive(s, seed=0)
    assert not s.running and not s.waiting
    assert s.kv.num_used == 0 and s.kv.pool.num_free == 16 and not s.kv.in_flight
    s.kv.check([])
    assert s.num_preemptions > 50
    assert (s.kv.num_hits > 0) == cache


class ForgetfulPool(BlockPool):
    """Eviction that forgets to drop the evicted block's hash-table entry."""

    def _evict(self, block: Block) -> None:
        block.hash, block.parent_hash, block.tokens = None, None, ()


class LeakyPool(BlockPool):
    """Release that forgets to put a block back in the free queue now and then."""

    def release(self, blocks: Iterable[Block]) -> None:
        for i, block in enumerate(list(blocks)):
            block.ref_count -= 1
            if block.ref_count == 0 and (i or block.block_id % 3):
                self.free[block.block_id] = None


@pytest.mark.parametrize("broken", [ForgetfulPool, LeakyPool])
def test_the_check_catches_a_pool_that_forgets_a_block(broken: type[BlockPool]) -> None:
    s = _scheduler(blocks=16, max_num_seqs=6, budget=48)
    s.kv.pool = broken(16)
    with pytest.raises(AssertionError):
        _drive(s, seed=0, requests=200)


def test_the_block_table_array_mirrors_every_table_and_clears_released_rows() -> None:
    """The runner reads block tables from KVCacheManager.tables, not the lists: after every
    step of a preempting, aborting load, each holder's row equals its list, NULL_BLOCK after."""
    s = _scheduler(blocks=16, max_num_seqs=6, budget=48)
    _drive(s, seed=1, requests=300)  # _run calls kv.check, which compares the two
    assert not s.kv.tables.array.any()  # every row released and cleared to NULL_BLOCK


def test_block_table_array_grows_in_rows_and_width() -> None:
    tables = BlockTableArray(rows=2, width=2)
    rows = [tables.take_row([1, 2, 3]) for _ in range(5)]
    assert len(set(rows)) == 5
    tables.append(rows[0], 3, 9)
    assert tables.matches(rows[0], [1, 2, 3, 9]) and tables.matches(rows[4], [1, 2, 3])
    tables.release_row(rows[0])
    assert tables.matches(rows[0], []) and tables.take_row([4]) == rows[0]


class StaleTables(BlockTableArray):
    """A mirror that forgets the blocks a decoding sequence grows into."""

    def append(self, row: int, index: int, block: int) -> None:
        pass


def test_the_check_catches_a_block_table_array_out_of_step() -> None:
    s = _scheduler(blocks=16, max_num_seqs=6, budget=48)
    s.kv.tables = StaleTables()
    with pytest.raises(AssertionError):
        _drive(s, seed=0, requests=200)


def test_block_table_array_hands_out_rows_densely_and_doubles_as_int64() -> None:
    """Rows are reused before the array grows, none is lost when it grows, growth doubles (a
    step's index must stay cheap), and the entries stay int64 (they index the KV cache)."""
    tables = BlockTableArray(rows=2, width=2)
    rows = [tables.take_row(list(range(1, i + 2))) for i in range(5)]
    assert sorted(rows) == list(range(5))
    assert tables.array.shape == (8, 8) and tables.array.dtype == np.int64
    for row in rows[:3]:
        tables.release_row(row)
    assert sorted(tables.take_row([7]) for _ in range(4)) == sorted([*rows[:3], 5])
    assert tables.array.shape == (8, 8) and tables.array.dtype == np.int64
