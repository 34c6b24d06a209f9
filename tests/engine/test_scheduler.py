"""Scheduler and KV-block bookkeeping, driven without a model (pure Python, fast; part of
`make mutation`). The property test at the end replays random add/abort/step sequences against
a model of the KV cache's contents, block by block."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.core.kv_cache import KVCacheManager
from app.engine.core.scheduler import PLACEHOLDER, ScheduledBatch, Scheduler
from app.engine.core.sequence import FinishReason, Sequence, Status
from app.engine.protocol import SamplingParams

EOS = 50256


def _seq(rid: str, prompt_len: int, max_tokens: int, **kw: object) -> Sequence:
    """A prompt of one token repeated, a different token per request id: no two requests
    share a prefix unless a test builds them to."""
    params = SamplingParams(max_tokens=max_tokens, **kw)  # type: ignore[arg-type]
    token = 1000 + zlib.crc32(rid.encode()) % 40000
    return Sequence(rid, [token] * prompt_len, prompt_len, params, 0.0)


def _make(
    max_num_seqs: int = 4,
    budget: int = 64,
    blocks: int = 64,
    block_size: int = 16,
    max_model_len: int = 128,
    threshold: int | None = None,
    cache: bool = True,
) -> Scheduler:
    kv = KVCacheManager(blocks, block_size, enable_prefix_cache=cache)
    return Scheduler(max_num_seqs, budget, kv, EOS, max_model_len, threshold)


def _check_invariants(s: Scheduler, batch: ScheduledBatch) -> None:
    assert batch.num_tokens <= s.max_num_batched_tokens
    assert len(s.running) <= s.max_num_seqs
    s.kv.check(s.running)
    for seq, n in batch.items:
        assert seq.num_computed + n <= seq.num_tokens
        # never over-commits: every position the step writes has its block
        assert seq.num_computed + n <= len(seq.block_table) * s.kv.block_size
        assert seq.num_tokens + seq.params.max_tokens - seq.num_output_tokens <= s.max_model_len


def _step(
    s: Scheduler, rng: random.Random, token: int = 7
) -> tuple[ScheduledBatch, list[Sequence]]:
    batch = s.schedule(0.0)
    _check_invariants(s, batch)
    sampled = [token for seq, n in batch.items if batch.samples(seq, n)]
    return batch, s.postprocess(batch, sampled)


def test_admission_stops_when_the_blocks_run_out() -> None:
    s = _make(max_num_seqs=3, blocks=2)
    for i in range(5):
        s.add(_seq(f"r{i}", 4, 8))
    batch, _ = _step(s, random.Random(0))
    assert len(s.running) == 2 and len(s.waiting) == 3  # block-bound, not seq-bound
    assert [seq.request_id for seq, _ in batch.items] == ["r0", "r1"]


def test_admission_stops_at_max_num_seqs_with_blocks_and_budget_to_spare() -> None:
    s = _make(max_num_seqs=2, budget=64, blocks=4)
    seqs = [_seq(f"r{i}", 4, 1 + i) for i in range(5)]
    for seq in seqs:
        s.add(seq)
    batch = s.schedule(0.0)
    # max_num_seqs binds: two blocks are free and 56 tokens of budget are left.
    assert [seq.request_id for seq, _ in batch.items] == ["r0", "r1"]
    assert s.kv.pool.num_free == 2 and batch.num_tokens == 8
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
    s = _make(max_num_seqs=4, budget=64, blocks=128, max_model_len=1024)
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
    s = _make(4, 512, blocks=128, max_model_len=1024, threshold=48)
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


# ---- the property: random add / abort / step sequences keep the bookkeeping exact ----------


class CacheModel:
    """What each KV cache slot holds, as the runner would write it: each scheduled chunk writes
    its tokens at the slots its block table gives. After every step each running sequence must
    read its own tokens back through its table, whoever wrote them (a prefix-cache hit reads
    blocks another sequence wrote; a block reused too early would show here)."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.slots: dict[int, int] = {}

    def _slot(self, seq: Sequence, pos: int) -> int:
        return seq.block_table[pos // self.block_size] * self.block_size + pos % self.block_size

    def run(self, batch: ScheduledBatch, running: list[Sequence]) -> None:
        for seq, n in batch.items:
            for pos in range(seq.num_computed, seq.num_computed + n):
                self.slots[self._slot(seq, pos)] = seq.token_ids[pos]
        written = {id(seq): n for seq, n in batch.items}
        for seq in running:
            end = seq.num_computed + written.get(id(seq), 0)
            got = [self.slots.get(self._slot(seq, p)) for p in range(end)]
            assert got == seq.token_ids[:end], seq.request_id


def _check_state(s: Scheduler, seqs: list[Sequence]) -> None:
    assert len(s.running) <= s.max_num_seqs
    s.kv.check(s.running)  # every block accounted for, the hash table consistent
    for seq in s.running:
        assert seq.status is Status.RUNNING
    for seq in s.waiting:
        assert seq.status is Status.WAITING and not seq.block_table and seq.num_computed == 0
    for seq in seqs:
        if seq.is_finished:
            assert not seq.block_table and seq not in s.running and seq not in s.waiting
            assert seq.finish_reason is not None


def _check_batch(s: Scheduler, batch: ScheduledBatch, decoding: list[Sequence]) -> None:
    decoding = [q for q in decoding if q.status is Status.RUNNING]  # not preempted
    assert batch.num_tokens <= s.max_num_batched_tokens
    assert [seq for seq, _ in batch.items[: len(decoding)]] == decoding  # never starved
    assert all(n == 1 for _, n in batch.items[: len(decoding)])
    assert len({id(seq) for seq, _ in batch.items}) == len(batch.items)
    for seq, n in batch.items:
        assert 0 < n <= seq.num_tokens - seq.num_computed
        if batch.samples(seq, n):  # never a token past its limit (placeholders count)
            assert seq.num_output_tokens < seq.params.max_tokens
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


class PipelinedCacheModel(CacheModel):
    """CacheModel for async scheduling: a step launched before the previous one's tokens are
    known feeds placeholders, and the device writes the keys and values of the token that
    takes the placeholder's place; the slot remembers whose token it holds and reads it when
    checked."""

    def run(self, batch: ScheduledBatch, running: list[Sequence]) -> None:
        for seq, n in batch.items:
            for pos in range(seq.num_computed, seq.num_computed + n):
                token = seq.token_ids[pos]
                self.slots[self._slot(seq, pos)] = (seq, pos) if token == PLACEHOLDER else token  # type: ignore[assignment]
        written = {id(seq): n for seq, n in batch.items}
        for seq in running:
            end = seq.num_computed + written.get(id(seq), 0)
            got = [self._read(self.slots.get(self._slot(seq, p))) for p in range(end)]
            assert got == seq.token_ids[:end], seq.request_id

    @staticmethod
    def _read(held: object) -> object:
        if isinstance(held, tuple):
            writer, pos = held
            return writer.token_ids[pos]
        return held


@pytest.mark.parametrize("pipelined", [False, True])
@settings(max_examples=150)
@given(
    ops=OPS,
    max_num_seqs=st.integers(1, 5),
    budget=st.integers(8, 64),
    num_blocks=st.integers(24, 60),
    threshold=st.sampled_from([None, 4, 16]),
    cache=st.booleans(),
)
def test_random_adds_aborts_and_steps_keep_blocks_exact_and_bounded(
    pipelined: bool,
    ops: list[tuple[object, ...]],
    max_num_seqs: int,
    budget: int,
    num_blocks: int,
    threshold: int | None,
    cache: bool,
) -> None:
    """Pipelined: each step launched (advance) before the previous one's tokens are resolved,
    as async scheduling does: placeholders resolve in place, a sequence that ends or is aborted
    meanwhile takes no token, one preempted meanwhile takes its token and waits, and every
    block still comes back."""
    # 4-token blocks and 24-60 of them for sequences of up to 82 tokens: blocks run out and
    # sequences are preempted often.
    s = _make(max_num_seqs, budget, num_blocks, 4, 96, threshold, cache)
    model = PipelinedCacheModel(4) if pipelined else CacheModel(4)
    seqs: list[Sequence] = []
    in_flight: list[tuple[ScheduledBatch, list[int], int]] = []

    def resolve(batch: ScheduledBatch, slots: list[int], token: int) -> None:
        # Sampled in this step, ended (or aborted) since it was launched: their tokens drop.
        gone = [
            seq
            for (seq, _), at in zip(batch.items, slots, strict=True)
            if at >= 0 and seq.is_finished
        ]
        dropped, finished = s.resolve(batch, slots, [token for at in slots if at >= 0])
        assert dropped == gone
        for seq in finished:
            _check_finished(seq, token)
            assert PLACEHOLDER not in seq.token_ids

    def step(token: int) -> None:
        decoding = [q for q in s.running if q.is_decoding]
        batch = s.schedule(0.0)
        _check_batch(s, batch, decoding)
        model.run(batch, s.running)
        slots = s.advance(batch)
        for (seq, _), at in zip(batch.items, slots, strict=True):
            if at >= 0 and seq.status is Status.RUNNING:
                # it decodes in the next step, before this token is known, unless it is its last
                last = at + 1 - seq.num_prompt_tokens >= seq.params.max_tokens
                assert seq.is_decoding is not last
        if not pipelined:
            resolve(batch, slots, token)
        else:
            if in_flight:
                resolve(*in_flight.pop())
            in_flight.append((batch, slots, token))
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
                assert victim.finish_reason is FinishReason.ABORT and not victim.block_table
        elif op[0] == "step":
            step(op[1])  # type: ignore[arg-type]
        _check_state(s, seqs)
    for _ in range(2000):  # then everything finishes, and every block comes back
        if not s.num_unfinished and not in_flight:
            break
        step(7)
    assert s.num_unfinished == 0 and s.kv.num_used == 0
    assert s.kv.pool.num_free == num_blocks
    assert all(seq.is_finished for seq in seqs)


def test_a_sequence_preempted_while_its_token_is_in_flight_can_end_on_that_token() -> None:
    """Async scheduling: B samples in step 1; step 2 is scheduled before that token is known
    and preempts B for A's next block; B's token then turns out to be a stop token. B ends
    from the waiting queue, where the preemption put it."""
    s = _make(max_num_seqs=2, blocks=3, block_size=4, cache=False)
    a, b = _seq("a", 4, 8), _seq("b", 8, 8, stop_token_ids=(5,))
    s.add(a)
    s.add(b)
    first = s.schedule(0.0)
    assert [seq for seq, _ in first.items] == [a, b] and s.kv.num_used == 3
    first_slots = s.advance(first)
    second = s.schedule(0.0)  # a needs a fourth block: b, the newest, is preempted
    assert [seq for seq, _ in second.items] == [a] and b.status is Status.WAITING
    second_slots = s.advance(second)
    dropped, finished = s.resolve(first, first_slots, [7, 5])
    assert dropped == [] and finished == [b]
    assert b.finish_reason is FinishReason.STOP and b.output_ids == [5]
    assert b not in s.waiting and b not in s.running
    assert a.token_ids[-2:] == [7, PLACEHOLDER]
    dropped, finished = s.resolve(second, second_slots, [9])
    assert dropped == [] and finished == [] and a.output_ids == [7, 9]
    s.kv.check(s.running)


# ---- edges found by mutation testing (make mutation) ------------------------------------------


def test_budget_admits_to_the_last_token_and_no_further() -> None:
    s = _make(max_num_seqs=8, budget=3)
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
    s = _make(4, 512, blocks=128, max_model_len=1024, threshold=16)
    d = _decoding(s)
    long, exact, short = _seq("long", 100, 4), _seq("exact", 16, 4), _seq("short", 10, 4)
    for seq in (long, exact, short):
        s.add(seq)
    batch, _ = _step(s, random.Random(0), token=7)
    assert batch.items == [(d, 1), (long, 16), (exact, 16), (short, 10)]
    assert exact.output_ids == [7] and short.output_ids == [7]  # sampled after a partial chunk
    assert long.num_computed == 16 and long.output_ids == []


def test_a_short_prompt_first_leaves_the_long_share_to_a_long_one() -> None:
    s = _make(4, 512, blocks=128, max_model_len=1024, threshold=16)
    d = _decoding(s)
    exact, long = _seq("exact", 16, 4), _seq("long", 100, 4)
    s.add(exact)
    s.add(long)
    assert s.schedule(0.0).items == [(d, 1), (exact, 16), (long, 16)]


def test_a_second_long_prompt_waits_for_the_long_share() -> None:
    s = _make(4, 512, blocks=128, max_model_len=1024, threshold=16)
    d = _decoding(s)
    first, second = _seq("first", 100, 4), _seq("second", 100, 4)
    s.add(first)
    s.add(second)
    batch, _ = _step(s, random.Random(0))
    assert batch.items == [(d, 1), (first, 16)] and list(s.waiting) == [second]
    batch, _ = _step(s, random.Random(0))
    assert batch.items == [(d, 1), (first, 16)] and list(s.waiting) == [second]


def test_a_long_share_of_one_token_still_admits_a_long_prompt() -> None:
    s = _make(4, 64, blocks=128, max_model_len=1024, threshold=1)
    d = _decoding(s)
    long = _seq("long", 10, 4)
    s.add(long)
    assert s.schedule(0.0).items == [(d, 1), (long, 1)]


def test_a_prefill_gets_the_last_token_of_the_budget() -> None:
    """Two streams decode in a budget of 3: the prompt part-way through its prefill gets the one
    token left (a prompt with one token left is a decode: it comes with them)."""
    s = _make(max_num_seqs=4, budget=3)
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


def test_a_decode_behind_a_prefilling_sequence_still_gets_its_token() -> None:
    """Running order is admission order: a long prompt admitted before a short one may still be
    prefilling when the short one decodes; the decode loop must go on past it."""
    s = _make(max_num_seqs=4, budget=64, blocks=64, max_model_len=256, threshold=8)
    d = _decoding(s)
    long, short = _seq("long", 100, 4), _seq("short", 4, 4)
    s.add(long)
    s.add(short)
    _step(s, random.Random(0))  # long's first chunk (8 tokens), short's whole prompt
    assert s.running == [d, long, short] and not long.is_decoding and short.is_decoding
    batch, _ = _step(s, random.Random(0))
    assert (d, 1) in batch.items and (short, 1) in batch.items and not long.is_decoding


def test_a_prefilling_sequence_preempted_by_a_decode_is_not_scheduled_in_that_step() -> None:
    """Three blocks: d (15-token prompt) decodes, p (20 tokens) is admitted and prefills in
    8-token chunks. When d's next token needs a block and none is free, d preempts p, the
    newest, in the decode pass: p goes back to the queue, and the prefill pass that follows
    must not give it a chunk."""
    s = _make(max_num_seqs=4, budget=64, blocks=3, max_model_len=256, threshold=8)
    d = _seq("d", 15, 40)
    s.add(d)
    _step(s, random.Random(0))  # d's prompt in one block, and its first token
    p = _seq("p", 20, 4)
    s.add(p)
    _step(s, random.Random(0))  # d's position 15 (its block's last); p takes 2 blocks, 8 tokens
    assert p.status is Status.RUNNING and p.num_computed == 8 and s.kv.pool.num_free == 0
    batch = s.schedule(0.0)  # d's position 16 needs a second block: p gives its two back
    assert list(s.waiting) == [p] and p.status is Status.WAITING and s.num_preemptions == 1
    assert batch.items == [(d, 1)]


def test_out_of_blocks_the_newest_of_three_is_preempted() -> None:
    """Three one-block prompts in a pool of four blocks: when all three need a second block,
    the second takes the last free one from the newest, which goes back to the queue."""
    s = _make(max_num_seqs=4, budget=64, blocks=4, max_model_len=64)
    first, second, third = (_seq(f"s{i}", 16, 8) for i in range(3))
    for seq in (first, second, third):
        s.add(seq)
    _step(s, random.Random(0))  # each prompt fills its one block
    batch, _ = _step(s, random.Random(0))
    assert s.running == [first, second] and list(s.waiting) == [third]
    assert [seq for seq, _ in batch.items] == [first, second]


def test_a_decode_that_takes_a_new_block_counts_one_token_of_the_budget() -> None:
    s = _make(max_num_seqs=4, budget=16, blocks=64, max_model_len=64)
    d = _seq("d", 16, 8)
    s.add(d)
    _step(s, random.Random(0))  # its 16 tokens fill its block: its next token needs another
    prompt = _seq("p", 15, 4)
    s.add(prompt)
    batch = s.schedule(0.0)
    assert batch.items == [(d, 1), (prompt, 15)]  # the budget to the last token
    assert len(d.block_table) == 2


def test_with_nothing_running_a_prompt_may_take_every_block() -> None:
    """The watermark keeps blocks back for running sequences to grow into; with none running
    it would only stall a prompt that fits (a 100-block pool keeps 1 block back otherwise)."""
    s = _make(max_num_seqs=4, budget=2048, blocks=100, block_size=16, max_model_len=2048)
    assert s.watermark_blocks == 1
    seq = _seq("all", 1600, 4)
    s.add(seq)
    batch = s.schedule(0.0)
    assert batch.items == [(seq, 1600)] and s.kv.pool.num_free == 0
