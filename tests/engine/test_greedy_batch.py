"""Greedy decoding through the engine equals transformers' generate, alone and in a busy batch."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from transformers import GPT2LMHeadModel

from app.engine import SamplingParams
from app.engine.worker.llm import LLM
from tests.checkpoints import hf_greedy

NUM_PROMPTS = 16


def _prompts() -> list[tuple[list[int], int]]:
    """16 prompts of 1..1000 tokens, each with its own max_tokens so they finish apart."""
    rng = random.Random(0)
    lengths = [1, 2, 3, 5, 8, 13, 30, 64, 100, 128, 200, 333, 500, 700, 900, 1000]
    assert len(lengths) == NUM_PROMPTS
    prompts = []
    for n in lengths:
        max_tokens = min(rng.randint(4, 24), 1024 - n)
        prompts.append(([rng.randrange(50257) for _ in range(n)], max_tokens))
    return prompts


PROMPTS = _prompts()


@pytest.fixture(scope="module")
def hf_reference(hf_model: GPT2LMHeadModel) -> list[list[int]]:
    return [hf_greedy(hf_model, ids, max_tokens, pad_token_id=50256) for ids, max_tokens in PROMPTS]


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize(
    ("cpu_gemm", "async_scheduling"), [("torch", False), ("onednn", False), ("onednn", True)]
)
def test_concurrent_staggered_greedy_equals_transformers_and_solo(
    make_llm: Any, hf_reference: list[list[int]], cpu_gemm: str, async_scheduling: bool
) -> None:
    llm: LLM = make_llm(
        max_num_seqs=8,
        max_num_batched_tokens=256,
        cpu_gemm=cpu_gemm,
        async_scheduling=async_scheduling,
    )
    # Staggered arrival: a new request joins every other step while earlier ones decode.
    pending = list(enumerate(PROMPTS))
    ids_by_request: dict[str, int] = {}
    got: dict[int, list[int]] = {i: [] for i in range(NUM_PROMPTS)}
    step = 0
    while pending or llm.core.has_unfinished():
        if pending and step % 2 == 0:
            i, (ids, max_tokens) = pending.pop(0)
            ids_by_request[llm.submit(ids, _greedy(max_tokens))] = i
        for out in llm.step():
            got[ids_by_request[out.request_id]].extend(out.token_ids)
        step += 1
    for i in range(NUM_PROMPTS):
        assert got[i] == hf_reference[i], f"prompt {i} ({len(PROMPTS[i][0])} tokens) differs"
    # ... and each equals its solo run through the same engine.
    for i in (0, 7, 15):
        ids, max_tokens = PROMPTS[i]
        (solo,) = llm.generate([ids], _greedy(max_tokens))
        assert solo.token_ids == got[i]
    assert llm.core.kv.num_used == 0


def test_generate_returns_text_and_finish_reason(make_llm: Any) -> None:
    llm: LLM = make_llm()
    (c,) = llm.generate(["Hello, world"], SamplingParams(max_tokens=5, temperature=0.0))
    assert c.finish_reason in ("stop", "length")
    assert c.text == llm.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    assert 1 <= len(c.token_ids) <= 5


def test_repetition_penalty_matches_transformers(make_llm: Any, hf_model: GPT2LMHeadModel) -> None:
    llm: LLM = make_llm()
    ids = PROMPTS[6][0]
    ref = hf_greedy(hf_model, ids, 30, pad_token_id=50256, repetition_penalty=1.3)
    params = SamplingParams(max_tokens=30, temperature=0.0, repetition_penalty=1.3, ignore_eos=True)
    (c,) = llm.generate([ids], params)
    assert c.token_ids == ref


def test_static_padded_decode_path_matches_eager(make_llm: Any) -> None:
    """The CUDA-graph decode path (static buffers, padding to captured batch sizes and context
    widths), run eagerly on CPU, yields the same greedy tokens as the plain path, and each step
    runs in the narrowest width that holds its longest context."""
    from app.engine.worker.cuda_graphs import StaticDecode

    groups = [[ids for ids, _ in PROMPTS[:7]], [PROMPTS[7][0]]]  # contexts to 42 and to 76
    params = _greedy(12)
    eager = [[c.token_ids for c in make_llm(max_num_seqs=8).generate(g, params)] for g in groups]
    llm: LLM = make_llm(max_num_seqs=8)
    runner = llm.core.runner
    top = runner.max_blocks_per_seq
    static = StaticDecode(runner.model, runner.kv, [1, 4, 8], top, capture=False, widths=[1, 2, 4])
    runner.static_decode = static
    used: list[tuple[int, int]] = []  # (rows, width in blocks) of each step
    chosen = static.graph_for
    static.graph_for = lambda b, w: used.append((b, w)) or chosen(b, w)  # type: ignore[method-assign]
    assert [[c.token_ids for c in llm.generate(g, params)] for g in groups] == eager
    # 7 rows padded to 8; positions 30-31 span 2 blocks, 32-41 span 3 (the 4-block graph),
    # 64-75 span 5 (only the full width holds them).
    assert {(7, 2), (7, 3), (1, 5)} <= set(used)
    assert {(8, 2), (8, 4), (1, top)} <= {chosen(b, w) for b, w in used}


def test_static_path_with_a_row_that_does_not_sample(make_llm: Any) -> None:
    """A token budget of 2 with one sequence decoding feeds the next prompt one token a step:
    each step is two single-token rows (the graph path), one of them a prompt token that
    samples nothing until the prompt's last. The same tokens as the plain path."""
    from app.engine.worker.cuda_graphs import StaticDecode

    prompts = [PROMPTS[2][0], PROMPTS[4][0]]  # 3 and 8 tokens
    params = _greedy(10)
    config = {"max_num_seqs": 2, "max_num_batched_tokens": 2}
    eager = [c.token_ids for c in make_llm(**config).generate(prompts, params)]
    llm: LLM = make_llm(**config)
    runner = llm.core.runner
    static = StaticDecode(runner.model, runner.kv, [2], runner.max_blocks_per_seq, capture=False)
    runner.static_decode = static
    rows: list[tuple[int, int]] = []  # (rows, rows that sample) of each graph step
    forward = runner.forward

    def spy(inputs: Any) -> Any:
        if inputs.attn.decode is not None and not inputs.attn.prefills:
            rows.append((len(inputs.input_ids), len(inputs.sampling)))
        return forward(inputs)

    runner.forward = spy  # type: ignore[method-assign]
    assert [c.token_ids for c in llm.generate(prompts, params)] == eager
    assert (2, 1) in rows


def test_context_widths_double_from_the_narrowest_to_the_longest() -> None:
    from app.engine.worker.cuda_graphs import MIN_CONTEXT_TOKENS, context_widths

    assert MIN_CONTEXT_TOKENS == 128
    assert context_widths(64, 16) == [8, 16, 32, 64]  # GPT-2: 128 to 1,024 tokens
    assert context_widths(63, 16) == [8, 16, 32, 63]  # --max-model-len 1000
    assert context_widths(48, 16) == [8, 16, 32, 48]
    assert context_widths(8, 16) == [8]
    assert context_widths(6, 16) == [6]  # 96 tokens: nothing narrower is worth a graph
    assert context_widths(64, 32) == [4, 8, 16, 32, 64]  # 128-token widths of 32-token blocks


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_greedy_with_graphs_matches_transformers(
    tiny_model_dir: Any, hf_reference: list[list[int]]
) -> None:
    from app.engine import EngineConfig

    llm = LLM(
        EngineConfig(
            model=str(tiny_model_dir),
            device="cuda",
            dtype="float32",
            max_num_seqs=16,
            kv_cache_tokens=32768,
        )
    )
    assert llm.core.runner.static_decode is not None
    got = llm.generate([ids for ids, _ in PROMPTS], [_greedy(n) for _, n in PROMPTS])
    assert [c.token_ids for c in got] == hf_reference
