"""Scheduler and KV-slot bookkeeping, driven without a model (pure Python, fast; part of
`make mutation`). The property test at the end replays random add/abort/step sequences against
a model of the KV cache's contents."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_admission_stops_when_the_slots_run_out() -> None:
    s = _make(max_num_seqs=3, slots=2)
    for i in range(5):
        s.add(_seq(f"r{i}", 4, 8))
    batch, _ = _step(s, random.Random(0))
    assert len(s.running) == 2 and len(s.waiting) == 3  # slot-bound, not seq-bound
    assert [seq.request_id for seq, _ in batch.items] == ["r0", "r1"]


def test_admission_stops_at_max_num_seqs_with_slots_and_budget_to_spare() -> None:
    s = _make(max_num_seqs=2, budget=64, slots=4)
    seqs = [_seq(f"r{i}", 4, 1 + i) for i in range(5)]
    for seq in seqs:
        s.add(seq)
    batch = s.schedule(0.0)
    # max_num_seqs binds: two slots are free and 56 tokens of budget are left.
    assert [seq.request_id for seq, _ in batch.items] == ["r0", "r1"]
    assert s.slots.num_free == 2 and batch.num_tokens == 8
    assert list(s.waiting) == seqs[2:]
    assert s.postprocess(batch, [7, 7]) == [seqs[0]]  # r0 asked for one token
    batch, done = _step(s, random.Random(0))  # its place goes to r2, and only to r2
    assert [seq.request_id for seq, _ in batch.items] == ["r1", "r2"]
    assert done == [seqs[1]] and list(s.waiting) == seqs[3:]
    batch, _ = _step(s, random.Random(0))
    assert [seq.request_id for seq, _ in batch.items] == ["r2", "r3"]
    assert len(s.running) == 2 and list(s.waiting) == seqs[4:]


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


# ---- the property: random add / abort / step sequences keep the bookkeeping exact ----------


class CacheModel:
    """What each KV slot holds, position by position, as the runner would write it: the moves
    copy a prefix of one slot into another, then each scheduled chunk writes its tokens."""

    def __init__(self, num_slots: int) -> None:
        self.slots: list[list[int]] = [[] for _ in range(num_slots)]

    def run(self, batch: ScheduledBatch, running: list[Sequence]) -> None:
        for move in batch.moves:
            assert move.src != move.dst and move.length > 0
            self.slots[move.dst] = list(self.slots[move.src][: move.length])
        for seq, n in batch.items:
            assert seq.slot is not None
            cached = self.slots[seq.slot]
            assert len(cached) >= seq.num_computed
            cached[seq.num_computed :] = seq.token_ids[seq.num_computed : seq.num_computed + n]
        # After the moves, each slot holds its own sequence's tokens, whoever wrote them.
        written = {id(seq): n for seq, n in batch.items}
        for seq in running:
            end = seq.num_computed + written.get(id(seq), 0)
            assert self.slots[seq.slot or 0][:end] == seq.token_ids[:end], seq.request_id


def _check_state(s: Scheduler, seqs: list[Sequence]) -> None:
    used = s.slots.num_used
    assert used == len(s.running) <= s.max_num_seqs  # one slot per running sequence, no leak
    assert sorted(seq.slot for seq in s.running) == list(range(used))  # packed  # type: ignore[type-var]
    assert all(s.slots.owners[i] is not None for i in range(used))
    assert s.slots.owners[used:] == [None] * (s.slots.num_slots - used)
    for seq in s.running:
        assert seq.status is Status.RUNNING and s.slots.owners[seq.slot or 0] is seq
    for seq in s.waiting:
        assert seq.status is Status.WAITING and seq.slot is None and seq.num_computed == 0
    for seq in seqs:
        if seq.is_finished:
            assert seq.slot is None and seq not in s.running and seq not in s.waiting
            assert seq.finish_reason is not None


def _check_batch(s: Scheduler, batch: ScheduledBatch, decoding: list[Sequence]) -> None:
    assert batch.num_tokens <= s.max_num_batched_tokens
    assert [seq for seq, _ in batch.items[: len(decoding)]] == decoding  # never starved
    assert all(n == 1 for _, n in batch.items[: len(decoding)])
    assert len({id(seq) for seq, _ in batch.items}) == len(batch.items)
    for seq, n in batch.items:
        assert 0 < n <= seq.num_tokens - seq.num_computed
    if decoding:  # long prompts share at most the threshold while streams decode
        threshold = s.max_prefill_tokens_while_decoding
        long = sum(
            n
            for seq, n in batch.items[len(decoding) :]
            if seq.num_tokens - seq.num_computed > threshold
        )
        assert long <= threshold


def _check_finished(seq: Sequence, token: int) -> None:
    p = seq.params
    if seq.finish_reason is FinishReason.STOP:
        assert token in (*p.stop_token_ids, EOS) and seq.num_output_tokens > p.min_tokens
    else:
        assert seq.finish_reason is FinishReason.LENGTH
        assert seq.num_output_tokens == p.max_tokens


PROMPTS = st.builds(
    lambda shared, own, mark: [1] * shared + [mark] * own,
    st.integers(0, 40),
    st.integers(0, 30),
    st.integers(2, 4),
).filter(bool)
ADD = st.tuples(st.just("add"), PROMPTS, st.integers(1, 12), st.integers(0, 2))
STEP = st.tuples(st.just("step"), st.sampled_from([3, 5, 7, EOS]))
OPS = st.lists(
    st.one_of(ADD, ADD, STEP, STEP, st.tuples(st.just("abort"), st.integers(0, 1000))),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150)
@given(
    ops=OPS,
    max_num_seqs=st.integers(1, 5),
    budget=st.integers(8, 64),
    num_slots=st.integers(1, 5),
    threshold=st.sampled_from([None, 4, 16]),
    share=st.booleans(),
)
def test_random_adds_aborts_and_steps_keep_slots_packed_and_bounded(
    ops: list[tuple[object, ...]],
    max_num_seqs: int,
    budget: int,
    num_slots: int,
    threshold: int | None,
    share: bool,
) -> None:
    s = Scheduler(
        max_num_seqs, budget, SlotAllocator(num_slots, 96), EOS, threshold, share_prefixes=share
    )
    cache = CacheModel(num_slots)
    seqs: list[Sequence] = []

    def step(token: int) -> None:
        decoding = sorted((q for q in s.running if q.is_decoding), key=lambda q: q.slot or 0)
        batch = s.schedule(0.0)
        _check_batch(s, batch, decoding)
        cache.run(batch, s.running)
        sampled = [token for seq, n in batch.items if batch.samples(seq, n)]
        for seq in s.postprocess(batch, sampled):
            _check_finished(seq, token)
        _check_state(s, seqs)

    for op in ops:
        if op[0] == "add":
            _, prompt, max_tokens, min_tokens = op
            params = SamplingParams(
                max_tokens=max_tokens,  # type: ignore[arg-type]
                min_tokens=min(min_tokens, max_tokens),  # type: ignore[type-var]
                stop_token_ids=(5,),
            )
            seq = Sequence(f"r{len(seqs)}", list(prompt), len(prompt), params, 0.0)  # type: ignore[arg-type]
            seqs.append(seq)
            s.add(seq)
        elif op[0] == "abort" and seqs:
            victim = seqs[op[1] % len(seqs)]  # type: ignore[operator]
            if not victim.is_finished:
                s.abort(victim)
                assert victim.finish_reason is FinishReason.ABORT and victim.slot is None
        elif op[0] == "step":
            step(op[1])  # type: ignore[arg-type]
        _check_state(s, seqs)
    for _ in range(2000):  # then everything finishes, and every slot comes back
        if not s.num_unfinished:
            break
        step(7)
    assert s.num_unfinished == 0 and s.slots.num_used == 0
    assert s.slots.owners == [None] * num_slots
    assert all(seq.is_finished for seq in seqs)


# ---- edges found by mutation testing (make mutation) ------------------------------------------


def _running(s: Scheduler, seq: Sequence, computed: int) -> Sequence:
    """Place seq as a running sequence whose first `computed` tokens are cached."""
    s.slots.allocate(seq)
    seq.status, seq.num_computed = Status.RUNNING, computed
    s.running.append(seq)
    return seq


def test_decodes_run_in_slot_order_after_a_move() -> None:
    """The runner reads decode rows as slots [0, n) when they come in slot order."""
    s = _make(max_num_seqs=3, slots=3)
    a, b, c = _seq("a", 2, 1), _seq("b", 2, 10), _seq("c", 2, 10)
    for seq in (a, b, c):
        s.add(seq)
    _step(s, random.Random(0))  # a finished: c moved from slot 2 into slot 0
    assert (c.slot, b.slot) == (0, 1) and s.running == [b, c]
    batch, _ = _step(s, random.Random(0))
    assert batch.items == [(c, 1), (b, 1)]


def test_budget_admits_to_the_last_token_and_no_further() -> None:
    s = _make(max_num_seqs=8, budget=3, slots=8)
    seqs = [_seq(f"r{i}", 1, 4) for i in range(4)]
    for seq in seqs:
        s.add(seq)
    batch = s.schedule(0.0)
    assert batch.items == [(seqs[0], 1), (seqs[1], 1), (seqs[2], 1)]  # the third takes the last
    assert list(s.waiting) == [seqs[3]]


def _decoding(s: Scheduler) -> Sequence:
    d = _seq("d", 2, 50)
    s.add(d)
    _step(s, random.Random(0))
    assert d.is_decoding
    return d


def test_short_prompts_go_whole_while_a_long_one_takes_the_long_share() -> None:
    """threshold 16: a prompt of exactly 16 tokens is short and goes whole, even after a long one
    took the whole long share; the long share is only spent by long prompts."""
    s = Scheduler(4, 512, SlotAllocator(5, 1024), EOS, max_prefill_tokens_while_decoding=16)
    d = _decoding(s)
    long, exact, short = _seq("long", 100, 4), _seq("exact", 16, 4), _seq("short", 10, 4)
    for seq in (long, exact, short):
        s.add(seq)
    batch, _ = _step(s, random.Random(0), token=7)
    assert batch.items == [(d, 1), (long, 16), (exact, 16), (short, 10)]
    assert exact.output_ids == [7] and short.output_ids == [7]  # sampled after a partial chunk
    assert long.num_computed == 16 and long.output_ids == []


def test_a_short_prompt_first_leaves_the_long_share_to_a_long_one() -> None:
    s = Scheduler(4, 512, SlotAllocator(5, 1024), EOS, max_prefill_tokens_while_decoding=16)
    d = _decoding(s)
    exact, long = _seq("exact", 16, 4), _seq("long", 100, 4)
    s.add(exact)
    s.add(long)
    assert s.schedule(0.0).items == [(d, 1), (exact, 16), (long, 16)]


def test_a_second_long_prompt_waits_for_the_long_share() -> None:
    s = Scheduler(4, 512, SlotAllocator(5, 1024), EOS, max_prefill_tokens_while_decoding=16)
    d = _decoding(s)
    first, second = _seq("first", 100, 4), _seq("second", 100, 4)
    s.add(first)
    s.add(second)
    batch, _ = _step(s, random.Random(0))
    assert batch.items == [(d, 1), (first, 16)] and list(s.waiting) == [second]
    batch, _ = _step(s, random.Random(0))
    assert batch.items == [(d, 1), (first, 16)] and list(s.waiting) == [second]


def test_a_long_share_of_one_token_still_admits_a_long_prompt() -> None:
    s = Scheduler(4, 64, SlotAllocator(4, 1024), EOS, max_prefill_tokens_while_decoding=1)
    d = _decoding(s)
    long = _seq("long", 10, 4)
    s.add(long)
    assert s.schedule(0.0).items == [(d, 1), (long, 1)]


def test_a_prefill_gets_the_last_token_of_the_budget() -> None:
    """Two streams decode in a budget of 3: the prompt part-way through its prefill gets the one
    token left (a prompt with one token left is a decode: it comes with them)."""
    s = _make(max_num_seqs=4, budget=3, slots=4)
    a, b, p = _seq("a", 1, 8), _seq("b", 1, 8), _seq("p", 10, 4)
    for seq in (a, b, p):
        s.add(seq)
    assert _step(s, random.Random(0))[0].items == [(a, 1), (b, 1), (p, 1)]
    assert _step(s, random.Random(0))[0].items == [(a, 1), (b, 1), (p, 1)]
    assert p.num_computed == 2


def test_admission_records_when_it_was_first_scheduled() -> None:
    s = _make()
    seq = _seq("a", 4, 4)
    s.add(seq)
    s.schedule(5.0)
    s.schedule(6.0)
    assert seq.first_scheduled_time == 5.0


def test_shared_prefix_tokens_add_up() -> None:
    s = _make(share_prefixes=True)
    first, second, third = _seq("a", 40, 4), _seq("b", 40, 4), _seq("c", 40, 4)
    for seq in (first, second, third):
        s.add(seq)
    _step(s, random.Random(0))
    batch, _ = _step(s, random.Random(0))
    assert [m.length for m in batch.moves] == [39, 39]
    assert s.num_shared_tokens == 78


def test_a_prompt_just_long_enough_shares_the_minimum() -> None:
    s = _make(share_prefixes=True)
    donor = _running(s, _seq("donor", 40, 4), 40)
    newcomer = _seq("new", MIN_SHARED_PREFIX + 1, 4)
    s.add(newcomer)
    batch = s.schedule(0.0)
    assert batch.moves == [SlotMove(donor.slot or 0, newcomer.slot or 0, MIN_SHARED_PREFIX)]
    assert (newcomer, 1) in batch.items


def test_a_donor_is_found_behind_an_unrelated_sequence() -> None:
    s = _make(share_prefixes=True)
    _running(s, Sequence("other", [2] * 40, 40, SamplingParams(max_tokens=4), 0.0), 40)
    donor = _running(s, _seq("donor", 40, 4), 40)
    newcomer = _seq("new", 30, 4)
    s.add(newcomer)
    assert s.schedule(0.0).moves == [SlotMove(donor.slot or 0, newcomer.slot or 0, 29)]


def test_the_donor_with_the_most_cached_tokens_wins() -> None:
    """One donor shares more of the prompt but has cached only 20 of it so far; the other
    shares less, all of it cached: 30 tokens can be copied now from the second, 20 from the
    first."""
    s = _make(share_prefixes=True, slot_len=128)
    params = SamplingParams(max_tokens=4)
    partial = _running(s, Sequence("partial", [1] * 45 + [3] * 5, 50, params, 0.0), 20)
    full = _running(s, Sequence("full", [1] * 30 + [4] * 20, 50, params, 0.0), 50)
    newcomer = _seq("new", 50, 4)
    s.add(newcomer)
    assert s.schedule(0.0).moves == [SlotMove(full.slot or 0, newcomer.slot or 0, 30)]
    assert partial.slot == 0


def test_no_wait_for_a_donor_whose_prompt_is_done() -> None:
    """A donor of a 15-token prompt has cached all of it (16 tokens with its first output): it
    will never cache the 16 the newcomer could share, so the newcomer does not wait."""
    s = _make(share_prefixes=True)
    _running(s, Sequence("donor", [1] * 16, 15, SamplingParams(max_tokens=4), 0.0), 15)
    newcomer = _seq("new", 20, 4)
    s.add(newcomer)
    batch = s.schedule(0.0)
    assert batch.moves == [] and (newcomer, 20) in batch.items
