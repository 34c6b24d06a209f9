"""Scheduler and KV-slot bookkeeping, driven without a model (pure Python, fast)."""

from __future__ import annotations

import random

import pytest

from app.engine.core.kv_cache import SlotAllocator, SlotMove
from app.engine.core.scheduler import MIN_SHARED_PREFIX, ScheduledBatch, Scheduler
from app.engine.core.sequence import FinishReason, Sequence, Status
from app.engine.protocol import SamplingParams

EOS = 50256


def _seq(rid: str, prompt_len: int, max_tokens: int, **kw: object) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens, **kw)  # type: ignore[arg-type]
    return Sequence(rid, [1] * prompt_len, prompt_len, params, 0.0)


def _make(
    max_num_seqs: int = 4,
    budget: int = 64,
    slots: int = 4,
    slot_len: int = 128,
    share_prefixes: bool = False,
) -> Scheduler:
    return Scheduler(
        max_num_seqs, budget, SlotAllocator(slots, slot_len), EOS, share_prefixes=share_prefixes
    )


def _check_invariants(s: Scheduler, batch: ScheduledBatch) -> None:
    assert batch.num_tokens <= s.max_num_batched_tokens
    assert len(s.running) <= s.max_num_seqs
    held = sorted(seq.slot for seq in s.running if seq.slot is not None)
    assert held == list(range(s.slots.num_used)), "slots must stay packed at [0, num_used)"
    assert all(s.slots.owners[i] is seq for seq in s.running for i in [seq.slot])
    for seq, n in batch.items:
        assert seq.num_computed + n <= seq.num_tokens
        assert seq.num_tokens + seq.params.max_tokens - seq.num_output_tokens <= s.slots.slot_len


def _step(
    s: Scheduler, rng: random.Random, token: int = 7
) -> tuple[ScheduledBatch, list[Sequence]]:
    batch = s.schedule(0.0)
    _check_invariants(s, batch)
    sampled = [token for seq, n in batch.items if batch.samples(seq, n)]
    return batch, s.postprocess(batch, sampled)


def test_admission_respects_max_num_seqs_and_slots() -> None:
    s = _make(max_num_seqs=3, slots=2)
    for i in range(5):
        s.add(_seq(f"r{i}", 4, 8))
    batch, _ = _step(s, random.Random(0))
    assert len(s.running) == 2 and len(s.waiting) == 3  # slot-bound, not seq-bound
    assert [seq.request_id for seq, _ in batch.items] == ["r0", "r1"]


def test_decodes_are_never_starved_by_a_long_prompt() -> None:
    """A 1000-token prompt arrives while 3 sequences decode: each step stays within the token
    budget and every decoding sequence still gets its token."""
    s = _make(max_num_seqs=4, budget=64, slots=4, slot_len=1024)
    for i in range(3):
        s.add(_seq(f"d{i}", 8, 200))
    rng = random.Random(0)
    _step(s, rng)  # prefill the three
    s.add(_seq("long", 1000, 8))
    steps = 0
    while s.running[-1].num_computed < 1000:
        batch, _ = _step(s, rng)
        decoding = [seq.request_id for seq, n in batch.items if n == 1]
        assert decoding[:3] == ["d0", "d1", "d2"]
        assert batch.num_tokens <= 64
        steps += 1
    assert steps == -(-1000 // 61)  # the prompt advanced by exactly the leftover budget


def test_prompts_get_a_smaller_share_while_streams_decode() -> None:
    """With sequences decoding, a step adds at most max_prefill_tokens_while_decoding prompt
    tokens; with none decoding, a prompt gets the whole budget."""
    s = Scheduler(4, 512, SlotAllocator(4, 1024), EOS, max_prefill_tokens_while_decoding=48)
    s.add(_seq("first", 600, 100))
    rng = random.Random(0)
    batch, _ = _step(s, rng)
    assert batch.items[0][1] == 512  # idle: the whole budget
    batch, _ = _step(s, rng)
    assert batch.items[0][1] == 88  # the rest of the prompt, still no decode running
    long = _seq("long", 500, 8)
    s.add(long)
    chunks = []
    while long.num_computed < 500:
        batch, _ = _step(s, rng)
        assert [n for seq, n in batch.items if seq.request_id == "first"] == [1]
        chunks.append(sum(n for seq, n in batch.items if seq.request_id == "long"))
    assert max(chunks) == 48 and sum(chunks) == 500
    # Short prompts are not chunked: a burst of them is admitted in one step, decodes running.
    for i in range(2):
        s.add(_seq(f"short{i}", 40, 8))
    batch, _ = _step(s, rng)
    assert sorted(n for seq, n in batch.items if seq.request_id.startswith("short")) == [40, 40]


def test_finish_and_abort_release_slots_and_keep_them_packed() -> None:
    s = _make(max_num_seqs=4, slots=4)
    seqs = [_seq(f"r{i}", 3, 2 + i) for i in range(4)]
    for seq in seqs:
        s.add(seq)
    rng = random.Random(0)
    _step(s, rng)
    s.abort(seqs[1])
    assert seqs[1].status is Status.FINISHED and seqs[1].finish_reason is FinishReason.ABORT
    assert seqs[1].slot is None and s.slots.num_used == 3
    # The move that refills slot 1 carries the moved sequence's whole cached length.
    moved = s.slots.owners[1]
    assert moved is seqs[3]
    batch = s.schedule(0.0)
    assert [(m.src, m.dst, m.length) for m in batch.moves] == [(3, 1, 3)]
    s.postprocess(batch, [7 for seq, n in batch.items if batch.samples(seq, n)])
    while s.num_unfinished:
        _step(s, rng)
    assert s.slots.num_used == 0 and not s.running


def test_stop_token_and_eos_and_length() -> None:
    s = _make()
    a, b, c = _seq("a", 2, 10, stop_token_ids=(5,)), _seq("b", 2, 10), _seq("c", 2, 2)
    for seq in (a, b, c):
        s.add(seq)
    batch = s.schedule(0.0)
    s.postprocess(batch, [5, EOS, 9])
    assert (a.finish_reason, b.finish_reason, c.finish_reason) == (
        FinishReason.STOP,
        FinishReason.STOP,
        None,
    )
    batch = s.schedule(0.0)
    s.postprocess(batch, [9])
    assert c.finish_reason is FinishReason.LENGTH and c.output_ids == [9, 9]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("share", [False, True], ids=["private", "shared-prefixes"])
def test_no_leak_after_1000_random_requests_with_random_aborts(seed: int, share: bool) -> None:
    # Every prompt here is [1] * n, so with sharing on, prefixes are copied and waited for all
    # the time, aborted donors included.
    rng = random.Random(seed)
    s = _make(max_num_seqs=6, budget=48, slots=5, slot_len=96, share_prefixes=share)
    live: list[Sequence] = []
    submitted = finished = 0
    while submitted < 1000 or s.num_unfinished:
        for _ in range(rng.randint(0, 3)):
            if submitted < 1000:
                seq = _seq(
                    f"r{submitted}", rng.randint(1, 80), rng.randint(1, 16), stop_token_ids=(3,)
                )
                s.add(seq)
                live.append(seq)
                submitted += 1
        if live and rng.random() < 0.2:
            victim = rng.choice(live)
            s.abort(victim)
        _, done = _step(s, rng, token=rng.choice([3, 4, 5, 6, 7, 8, 9, 10]))
        live = [seq for seq in live if not seq.is_finished]
        finished += len(done)
    assert s.slots.num_used == 0 and s.slots.owners == [None] * 5
    assert not s.running and not s.waiting
    assert (s.num_shared_tokens > 0) == share


def test_a_sibling_waits_for_the_shared_prefix_then_copies_it() -> None:
    s = _make(share_prefixes=True)
    first, second = _seq("a", 40, 4), _seq("b", 40, 4)
    s.add(first)
    s.add(second)
    batch, _ = _step(s, random.Random(0))
    assert batch.items == [(first, 40)]  # the sibling waits while the prefix is computed
    assert list(s.waiting) == [second]
    batch, _ = _step(s, random.Random(0))
    assert batch.moves == [SlotMove(src=first.slot or 0, dst=second.slot or 0, length=39)]
    assert (second, 1) in batch.items  # only the last prompt token: its row gives the logits
    assert s.num_shared_tokens == 39


def test_a_partial_prefix_is_shared_and_the_rest_computed() -> None:
    s = _make(share_prefixes=True)
    system = _seq("sys", 30, 8)
    s.add(system)
    _step(s, random.Random(0))  # its prompt is now cached
    user = Sequence("u", [1] * 20 + [5] * 10, 30, SamplingParams(max_tokens=4), 0.0)
    s.add(user)
    batch, _ = _step(s, random.Random(0))
    assert SlotMove(src=system.slot or 0, dst=user.slot or 0, length=20) in batch.moves
    assert (user, 10) in batch.items


def test_no_sharing_below_the_minimum_or_with_prompt_logprobs() -> None:
    s = _make(share_prefixes=True)
    s.add(_seq("a", 40, 4))
    _step(s, random.Random(0))
    short = _seq("short", MIN_SHARED_PREFIX, 4)  # MIN_SHARED_PREFIX - 1 tokens could be shared
    scored = _seq("scored", 40, 4, prompt_logprobs=0)  # needs every prompt row
    s.add(short)
    s.add(scored)
    batch, _ = _step(s, random.Random(0))
    assert batch.moves == []
    assert (short, MIN_SHARED_PREFIX) in batch.items and (scored, 40) in batch.items
