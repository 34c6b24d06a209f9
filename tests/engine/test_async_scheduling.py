"""Async scheduling (the next step scheduled and launched before this one's tokens are known)
gives the same tokens, logprobs and finishes as scheduling one step at a time, whatever ends a
sequence (its token limit, a stop token sampled, an abort), with preemption, the prefix cache,
seeded sampling, prompt logprobs, and penalties (which wait for the tokens first). On CPU the
device never runs ahead, but every placeholder still goes through the device-side copy."""

from __future__ import annotations

import random
from typing import Any

import pytest

from app.engine import SamplingParams
from app.engine.core.scheduler import PLACEHOLDER
from app.engine.protocol import GenerationDelta
from app.engine.worker.llm import LLM
from app.engine.worker.step_io import Launched


def _workload(stop_token: int | None) -> list[tuple[list[int], SamplingParams]]:
    rng = random.Random(1)
    shared = [rng.randrange(50257) for _ in range(40)]  # later prompts hit the prefix cache
    stops = [stop_token] if stop_token is not None else []
    kinds = [
        SamplingParams(max_tokens=20, temperature=0, ignore_eos=True),
        SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, stop_token_ids=stops),
        SamplingParams(max_tokens=16, temperature=0.9, top_k=40, seed=5, ignore_eos=True),
        SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=3),
        SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, prompt_logprobs=2),
        SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, min_tokens=4,
                       stop_token_ids=stops),
        SamplingParams(max_tokens=1, temperature=0, ignore_eos=True),
    ]  # fmt: skip
    # While it runs, every step waits for the tokens before the next: one, late.
    penalized = SamplingParams(max_tokens=8, temperature=0, repetition_penalty=1.3)
    work = []
    for i in range(24):
        head = shared if i % 3 == 0 else []
        tail = [rng.randrange(50257) for _ in range(rng.randint(1, 60))]
        work.append((head + tail, penalized if i == 20 else kinds[i % len(kinds)]))
    return work


def _run(llm: LLM, work: list[tuple[list[int], SamplingParams]], abort_at: dict[int, int]) -> Any:
    """Requests arrive two every step; request i is aborted after its abort_at[i]-th delta.
    Returns each request's deltas' (tokens, logprobs, finish, prompt logprobs)."""
    pending = list(enumerate(work))
    index: dict[str, int] = {}
    said: dict[int, list[GenerationDelta]] = {i: [] for i in range(len(work))}
    while pending or llm.has_unfinished():
        for _ in range(2):
            if pending:
                i, (prompt, params) = pending.pop(0)
                index[llm.submit(prompt, params)] = i
        for delta in llm.step():
            i = index[delta.request_id]
            said[i].append(delta)
            if len(said[i]) == abort_at.get(i) and not delta.finished:
                llm.abort(delta.request_id)
    while llm.core.has_unfinished():  # a step launched for sequences that have ended
        assert llm.step() == ()
    assert llm.core.requests == {} and llm.core.kv.num_used == 0
    return {
        i: (
            [t for d in ds for t in d.token_ids],
            [lp for d in ds for lp in d.logprobs],
            ds[-1].finish_reason,
            [d.prompt_logprobs for d in ds if d.prompt_logprobs is not None],
        )
        for i, ds in said.items()
    }


@pytest.mark.parametrize("kv_cache_tokens", [32768, 272])  # 272: sequences are preempted
def test_async_scheduling_gives_what_one_step_at_a_time_gives(
    make_llm: Any, kv_cache_tokens: int
) -> None:
    def engine(async_scheduling: bool) -> LLM:
        llm: LLM = make_llm(
            max_num_seqs=8,
            max_num_batched_tokens=128,
            kv_cache_tokens=kv_cache_tokens,
            max_model_len=256,
            async_scheduling=async_scheduling,
        )
        return llm

    # A token the greedy rows produce mid-answer becomes a stop token: answers then end on
    # what the model samples, known only once the step that sampled it is collected.
    probe = _run(engine(False), _workload(None), {})
    stop_token = probe[1][0][5]
    work = _workload(stop_token)
    abort_at = {2: 3, 9: 1, 17: 5}
    one_by_one = _run(engine(False), work, abort_at)
    sync_ends = {i: said[2] for i, said in one_by_one.items()}
    assert "stop" in sync_ends.values() and "abort" in sync_ends.values()
    ahead = engine(True)
    launched = _count_placeholder_rows(ahead)
    _assert_same(_run(ahead, work, abort_at), one_by_one)
    assert launched["rows"] > 40  # the device-side path was taken, step after step
    if kv_cache_tokens < 1000:
        assert ahead.core.scheduler.num_preemptions > 0


def _assert_same(got: Any, want: Any) -> None:
    """The same tokens, finishes and logprob entries; logprob values within 1e-4 (the two runs
    batch rows differently, and a row's values may differ in their last bits with the batch)."""
    assert got.keys() == want.keys()
    for i in want:
        (tokens, logprobs, finish, prompt), (want_tokens, want_lps, want_finish, want_prompt) = (
            got[i],
            want[i],
        )
        assert (tokens, finish) == (want_tokens, want_finish), i
        flat = [lp for lps in prompt for lp in lps]
        want_flat = [lp for lps in want_prompt for lp in lps]
        for a, b in zip([*logprobs, *flat], [*want_lps, *want_flat], strict=True):
            if a is None or b is None:
                assert a is b, i
                continue
            assert a.token_id == b.token_id and [t for t, _ in a.top] == [t for t, _ in b.top]
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4), i
            assert [v for _, v in a.top] == pytest.approx([v for _, v in b.top], abs=1e-4), i


def _count_placeholder_rows(llm: LLM) -> dict[str, int]:
    """Count the rows whose input was a placeholder filled from the step in flight."""
    runner = llm.core.runner
    prepare = runner.prepare
    counted = {"rows": 0}

    def counting(batch: Any, previous: Launched | None = None) -> Any:
        rows = [seq for seq, n in batch.items if n == 1 and seq.token_ids[-1] == PLACEHOLDER]
        if rows:
            assert previous is not None  # a placeholder always has a step in flight to fill it
        counted["rows"] += len(rows)
        return prepare(batch, previous)

    runner.prepare = counting  # type: ignore[method-assign]
    return counted


def test_penalties_wait_for_the_tokens(make_llm: Any) -> None:
    """A running sequence with penalties reads its output so far: the step in flight is
    collected before the next is launched, so no placeholder is ever fed then."""
    llm: LLM = make_llm(async_scheduling=True)
    counted = _count_placeholder_rows(llm)
    penalized = SamplingParams(max_tokens=12, temperature=0, repetition_penalty=1.5)
    reference: LLM = make_llm()
    want = reference.generate([[1, 2, 3], [4, 5]], penalized)
    got = llm.generate([[1, 2, 3], [4, 5]], penalized)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert counted["rows"] == 0


def test_checks_on_the_device_give_the_same_tokens(make_llm: Any) -> None:
    """The CUDA path's sampler (no host check; the invalid-row flags travel with the tokens)
    through the runner and async scheduling, on CPU: the same tokens as the host path."""
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    reference: LLM = make_llm()
    want = [r.token_ids for r in reference.generate(prompts, params)]
    llm: LLM = make_llm(async_scheduling=True)
    llm.core.runner.sampler.checks_on_device = True
    assert [r.token_ids for r in llm.generate(prompts, params)] == want


def test_an_abort_before_the_first_token_is_collected_reports_when_it_was_scheduled(
    make_llm: Any,
) -> None:
    """Aborted while its first token is still in flight (a placeholder): that token is
    dropped, and the abort carries the first-row facts (its queue time) as if none came."""
    llm: LLM = make_llm(async_scheduling=True)
    request_id = llm.submit([1, 2, 3], SamplingParams(max_tokens=8, temperature=0))
    assert llm.step() == ()  # launched: its first token is in flight
    assert llm.abort(request_id)
    (last,) = llm.step()
    assert last.finish_reason == "abort" and last.token_ids == ()
    assert last.timings is not None and last.timings.queue < last.timings.total
    assert llm.outputs.requests == {} and not llm.core.requests
