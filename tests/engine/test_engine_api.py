"""The in-process API: validation before work, abort, stop strings, chunked prefill."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from app.engine import InvalidRequestError, SamplingParams
from app.engine.worker.llm import LLM


def test_prompt_plus_max_tokens_beyond_context_is_rejected_before_any_work(make_llm: Any) -> None:
    llm: LLM = make_llm()
    with pytest.raises(InvalidRequestError) as err:
        llm.submit([1] * 1000, SamplingParams(max_tokens=100))
    assert err.value.field == "max_tokens"
    assert "1000 tokens" in str(err.value) and "1024" in str(err.value)
    assert not llm.core.has_unfinished() and llm.core.requests == {}


@pytest.mark.parametrize(
    ("prompt", "params", "field"),
    [
        ([], SamplingParams(), "prompt"),
        ([50257], SamplingParams(), "prompt"),
        ([1], SamplingParams(stop_token_ids=(99999,)), "stop_token_ids"),
    ],
)
def test_bad_requests_name_the_field(
    make_llm: Any, prompt: list[int], params: SamplingParams, field: str
) -> None:
    llm: LLM = make_llm()
    with pytest.raises(InvalidRequestError) as err:
        llm.submit(prompt, params)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0.0}, "top_p"),
        ({"temperature": -1}, "temperature"),
        ({"logprobs": 21}, "logprobs"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ],
)
def test_sampling_params_validate(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kwargs)
    assert err.value.field == field


def test_abort_frees_the_slot_by_the_next_step(make_llm: Any) -> None:
    llm: LLM = make_llm(max_num_seqs=2)
    a = llm.submit("first", SamplingParams(max_tokens=50, ignore_eos=True))
    b = llm.submit("second", SamplingParams(max_tokens=50, ignore_eos=True))
    c = llm.submit("third", SamplingParams(max_tokens=3, ignore_eos=True))
    llm.step()
    assert llm.core.kv.num_used == 2 and len(llm.core.scheduler.waiting) == 1
    assert llm.abort(a)
    assert llm.core.kv.num_used == 1
    outs = llm.step()
    assert any(o.request_id == a and o.finish_reason == "abort" for o in outs)
    assert {s.request_id for s in llm.core.scheduler.running} == {b, c}
    assert all(o.request_id != a for o in llm.step())
    assert not llm.abort(a)


def test_running_streams_keep_decoding_while_a_long_prompt_prefills(make_llm: Any) -> None:
    llm: LLM = make_llm(max_num_seqs=4, max_num_batched_tokens=64)
    runners = [
        llm.submit(f"stream {i}", SamplingParams(max_tokens=100, ignore_eos=True)) for i in range(3)
    ]
    llm.step()
    llm.submit([5] * 900, SamplingParams(max_tokens=4))
    for _ in range(10):  # 900 tokens need >= 15 steps at <= 61 prefill tokens each
        deltas = llm.step()
        stats = llm.last_stats
        assert stats is not None
        assert stats.num_decode_tokens == 3
        assert stats.num_decode_tokens + stats.num_prefill_tokens <= 64
        assert {d.request_id for d in deltas} == set(runners)


def test_sync_stream_yields_each_token(make_llm: Any) -> None:
    llm: LLM = make_llm()
    outs = list(llm.stream("Hello", SamplingParams(max_tokens=6, ignore_eos=True)))
    assert [len(o.token_ids) for o in outs] == [1] * 6
    assert outs[-1].finish_reason == "length" and outs[-1].num_output_tokens == 6


def test_in_process_stop_strings_go_through_the_output_processor(make_llm: Any) -> None:
    """LLM detokenizes like the service: a stop string ends the request (cut before it) and
    frees its slot, though the model itself would have gone on."""
    llm: LLM = make_llm()
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    [free] = llm.generate(["Hello"], greedy)
    assert free.finish_reason == "length" and len(free.text) > 4
    stop = free.text[2:4]  # a piece of what greedy decoding writes, likely across tokens
    [cut] = llm.generate(["Hello"], dataclasses.replace(greedy, stop=(stop,)))
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == free.text[: free.text.index(stop)]
    assert llm.core.requests == {} and llm.core.kv.num_used == 0


def test_leaving_a_stream_early_aborts_in_the_core(make_llm: Any) -> None:
    llm: LLM = make_llm()
    stream = llm.stream([7, 8, 9], SamplingParams(max_tokens=500, ignore_eos=True))
    next(stream)
    stream.close()
    llm.step()  # the abort is applied; its slot is free
    assert llm.core.requests == {} and llm.core.kv.num_used == 0 and not llm.has_unfinished()
