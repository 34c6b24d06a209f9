"""Prompt logprobs (params.prompt_logprobs) equal transformers' log-softmax at every prompt
position, however the prompt is chunked and whoever shares its steps."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from transformers import GPT2LMHeadModel

from app.engine import SamplingParams
from app.engine.core.sequence import TokenLogprobs
from app.engine.errors import InvalidRequestError
from app.engine.worker.llm import LLM


def _reference(hf: GPT2LMHeadModel, ids: list[int]) -> torch.Tensor:
    """(len(ids) - 1, V): row i is log p(token i + 1 | tokens 0..i)."""
    with torch.inference_mode():
        logits = hf(torch.tensor([ids])).logits[0].float()
    return logits.log_softmax(-1)[:-1]


def _check(
    got: list[TokenLogprobs | None] | None, ids: list[int], ref: torch.Tensor, k: int
) -> None:
    assert got is not None and len(got) == len(ids)
    assert got[0] is None  # nothing predicts the first token
    for pos in range(1, len(ids)):
        entry, want = got[pos], ref[pos - 1]
        assert entry is not None, pos
        assert entry.token_id == ids[pos]
        assert entry.logprob == pytest.approx(float(want[ids[pos]]), abs=1e-4), pos
        assert entry.rank == 1 + int((want > want[ids[pos]]).sum()), pos
        top_vals, top_ids = want.topk(k)
        assert len(entry.top) == k
        # Ties at the k-th place could swap ids; the values must match in order.
        assert [v for _, v in entry.top] == pytest.approx(top_vals.tolist(), abs=1e-4), pos
        assert [i for i, _ in entry.top[:1]] == top_ids[:1].tolist(), pos


def test_prompt_logprobs_match_transformers_across_chunks_and_companions(
    make_llm: Any, hf_model: GPT2LMHeadModel
) -> None:
    # A 16-token budget splits the 70-token prompt into chunks, and decoding companions share
    # its steps, so rows of one sequence sit at different offsets in the flat batch.
    llm: LLM = make_llm(max_num_seqs=4, max_num_batched_tokens=16)
    rng = random.Random(1)
    long_prompt = [rng.randrange(50257) for _ in range(70)]
    short_prompt = [rng.randrange(50257) for _ in range(5)]
    companions = [[rng.randrange(50257) for _ in range(3)] for _ in range(2)]
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    scored = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True, prompt_logprobs=3)
    results = llm.generate(
        [*companions, long_prompt, short_prompt], [greedy, greedy, scored, scored]
    )
    assert results[0].prompt_logprobs is None  # not asked for, not computed
    for prompt, result in zip([long_prompt, short_prompt], results[2:], strict=True):
        _check(result.prompt_logprobs, prompt, _reference(hf_model, prompt), k=3)


def test_prompt_logprobs_zero_gives_the_token_alone_and_a_one_token_prompt_none(
    make_llm: Any, hf_model: GPT2LMHeadModel
) -> None:
    llm: LLM = make_llm()
    params = SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=0)
    one, three = llm.generate([[464], [464, 3290, 286]], params)
    assert one.prompt_logprobs == [None]
    _check(three.prompt_logprobs, [464, 3290, 286], _reference(hf_model, [464, 3290, 286]), k=0)


def test_prompt_logprobs_are_validated() -> None:
    with pytest.raises(InvalidRequestError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
