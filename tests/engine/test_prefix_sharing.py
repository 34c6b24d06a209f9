"""Paged KV and the prefix cache through the real model: greedy tokens stay transformers' for
prompts that hit, partly hit and miss the cache, under concurrent staggered load, and when a
pool too small for the load preempts sequences and recomputes them; the cached prefix is not
computed again."""

from __future__ import annotations

import random
from typing import Any

from transformers import GPT2LMHeadModel

from app.engine import SamplingParams
from app.engine.worker.llm import LLM
from tests.checkpoints import hf_greedy

MAX_TOKENS = 12


def _prompts() -> list[list[int]]:
    rng = random.Random(7)
    system = [rng.randrange(50257) for _ in range(48)]  # three full blocks

    def words(n: int) -> list[int]:
        return [rng.randrange(50257) for _ in range(n)]

    return [
        system + words(12),  # computes the system prompt
        system + words(9),  # hits all three blocks
        system[:20] + words(30),  # hits one block (16 tokens), the rest differs
        words(40),  # misses
        system + words(12),  # another of the same kind, a few steps later
        system,  # the system prompt alone: its last block holds the last token
    ]


def _greedy() -> SamplingParams:
    return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)


def _staggered(llm: LLM, prompts: list[list[int]], every: int) -> tuple[list[list[int]], int]:
    """Greedy tokens of each prompt, one arriving every `every` steps, and the prompt tokens
    the engine computed."""
    pending = list(enumerate(prompts))
    ids: dict[str, int] = {}
    got: list[list[int]] = [[] for _ in prompts]
    computed = step = 0
    while pending or llm.has_unfinished():
        if pending and step % every == 0:
            i, prompt = pending.pop(0)
            ids[llm.submit(prompt, _greedy())] = i
        for delta in llm.step():
            got[ids[delta.request_id]].extend(delta.token_ids)
        if llm.last_stats is not None:
            computed += llm.last_stats.num_prefill_tokens
        step += 1
    return got, computed


def test_prefix_cache_hits_give_transformers_tokens_and_skip_their_prefill(
    make_llm: Any, hf_model: GPT2LMHeadModel
) -> None:
    prompts = _prompts()
    want = [hf_greedy(hf_model, p, MAX_TOKENS, pad_token_id=50256) for p in prompts]
    cached: LLM = make_llm(max_num_seqs=4)
    got, computed = _staggered(cached, prompts, every=3)
    assert got == want
    plain: LLM = make_llm(max_num_seqs=4, prefix_cache=False)
    got_plain, computed_plain = _staggered(plain, prompts, every=3)
    assert got_plain == want
    assert computed_plain == sum(len(p) for p in prompts) and plain.core.kv.num_hits == 0
    # prompts 1 and 4 take 48 tokens each, prompt 2 takes 16, the system prompt alone 32
    hits = 48 + 16 + 48 + 32
    assert cached.core.kv.num_hits == hits and computed == computed_plain - hits
    # Across time: the same prompts again, everything finished, take every full block.
    results = cached.generate(prompts, _greedy())
    assert [r.token_ids for r in results] == want
    assert [r.num_cached_tokens for r in results] == [(len(p) - 1) // 16 * 16 for p in prompts]
    cached.core.kv.check([])


def test_siblings_wait_for_the_prefix_and_reuse_it(
    make_llm: Any, hf_model: GPT2LMHeadModel
) -> None:
    """The n choices of one request arrive together: the first computes the prompt, the others
    wait a step and reuse its blocks."""
    prompt = _prompts()[0]
    want = hf_greedy(hf_model, prompt, MAX_TOKENS, pad_token_id=50256)
    llm: LLM = make_llm(max_num_seqs=4)
    results = llm.generate([prompt] * 3, _greedy())
    assert [r.token_ids for r in results] == [want] * 3
    assert [r.num_cached_tokens for r in results] == [0, 48, 48]


def test_preemption_recomputes_and_keeps_transformers_tokens(
    make_llm: Any, hf_model: GPT2LMHeadModel
) -> None:
    """A 256-token pool (16 blocks) for 8 sequences of up to 72 tokens: blocks run out while
    they decode, the newest are preempted and recomputed, and nothing changes in the tokens."""
    rng = random.Random(3)
    prompts = [[rng.randrange(50257) for _ in range(rng.randint(20, 60))] for _ in range(8)]
    want = [hf_greedy(hf_model, p, MAX_TOKENS, pad_token_id=50256) for p in prompts]
    for prefix_cache in (True, False):
        llm: LLM = make_llm(
            max_num_seqs=8, kv_cache_tokens=256, max_model_len=256, prefix_cache=prefix_cache
        )
        got, _ = _staggered(llm, prompts, every=1)
        assert got == want
        assert llm.core.scheduler.num_preemptions > 0
        assert llm.core.kv.num_used == 0
        llm.core.kv.check([])
