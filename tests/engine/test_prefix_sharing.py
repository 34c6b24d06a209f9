"""Prompts that share a prefix with a running sequence copy its cached keys/values: the tokens
stay transformers' greedy tokens, and the copied prefix is not computed again."""

from __future__ import annotations

import random
from typing import Any

from transformers import GPT2LMHeadModel

from app.engine import SamplingParams
from app.engine.worker.llm import LLM
from tests.checkpoints import hf_greedy


def _prompts() -> list[list[int]]:
    rng = random.Random(7)
    system = [rng.randrange(50257) for _ in range(48)]
    question = [rng.randrange(50257) for _ in range(12)]
    other = [rng.randrange(50257) for _ in range(9)]
    # the same prompt three times (n choices), the same system prompt with another question
    return [system + question] * 3 + [system + other]


def _run(llm: LLM, prompts: list[list[int]]) -> tuple[list[list[int]], int]:
    """Greedy tokens of each prompt, and how many prompt tokens the engine computed."""
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    ids = {llm.submit(p, params): i for i, p in enumerate(prompts)}
    got: list[list[int]] = [[] for _ in prompts]
    computed = 0
    while llm.has_unfinished():
        for delta in llm.step():
            got[ids[delta.request_id]].extend(delta.token_ids)
        assert llm.last_stats is not None
        computed += llm.last_stats.num_prefill_tokens
    return got, computed


def test_shared_prefixes_give_transformers_tokens_and_skip_their_prefill(
    make_llm: Any, hf_model: GPT2LMHeadModel
) -> None:
    prompts = _prompts()
    want = [hf_greedy(hf_model, p, 12, pad_token_id=50256) for p in prompts]
    shared_llm: LLM = make_llm(max_num_seqs=4)
    got, computed = _run(shared_llm, prompts)
    assert got == want
    private_llm: LLM = make_llm(max_num_seqs=4, share_prefixes=False)
    got_private, computed_private = _run(private_llm, prompts)
    assert got_private == want
    total = sum(len(p) for p in prompts)
    assert computed_private == total
    # The two copies of the whole prompt take 59 tokens each, the other question 48.
    assert shared_llm.core.scheduler.num_shared_tokens == 59 + 59 + 48
    assert computed == total - (59 + 59 + 48)
