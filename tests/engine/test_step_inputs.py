"""The runner's step inputs, built as arrays (positions, cache slots and block tables from the
block-table array, the decode mask from a precomputed table), equal the same inputs built row by
row from each sequence's own lists, for every step of a load that mixes decoding rows, chunked
prefills, prefix-cache hits, prompt logprobs and rows that do not sample."""

from __future__ import annotations

from typing import Any

import torch

from app.engine.core.scheduler import ScheduledBatch
from app.engine.protocol import SamplingParams
from app.engine.worker.step_io import StepInputs
from app.model.attention import NULL_BLOCK, decode_bias, slots_of


def _reference(batch: ScheduledBatch, block_size: int) -> dict[str, Any]:
    """Single-token rows first (in batch order), then the chunks: the layout prepare documents."""
    order = [i for i, (_, n) in enumerate(batch.items) if n == 1]
    order += [i for i, (_, n) in enumerate(batch.items) if n > 1]
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    sample_rows: list[int] = []
    sample_items: list[int] = []
    for item in order:
        seq, n = batch.items[item]
        start, end = seq.num_computed, seq.num_computed + n
        if end == seq.num_tokens:
            sample_rows.append(len(ids) + n - 1)
            sample_items.append(item)
        ids += seq.token_ids[start:end]
        positions += range(start, end)
        slots += slots_of(seq.block_table, start, end, block_size)
    singles = [batch.items[i][0] for i in order if batch.items[i][1] == 1]
    out: dict[str, Any] = {
        "ids": ids, "positions": positions, "slots": slots, "sample_rows": sample_rows,
        "sample_items": sample_items, "num_decode": len(singles),
    }  # fmt: skip
    if singles:
        width = max(s.num_computed // block_size + 1 for s in singles)
        out["tables"] = [(s.block_table + [NULL_BLOCK] * width)[:width] for s in singles]
        lengths = torch.tensor([s.num_computed + 1 for s in singles])
        out["bias"] = decode_bias(lengths, width * block_size, torch.float32)
    return out


def test_array_built_inputs_equal_the_row_by_row_reference(make_llm: Any) -> None:
    llm = make_llm(max_num_seqs=16, max_num_batched_tokens=64, max_prefill_tokens_while_decoding=24)
    runner = llm.core.runner
    prepare = runner.prepare
    checked = {"steps": 0, "mixed": 0, "decode_only": 0, "no_sample": 0}

    def checking_prepare(batch: ScheduledBatch, previous: Any = None) -> StepInputs:
        got = prepare(batch, previous)
        want = _reference(batch, runner.block_size)
        assert got.input_ids.tolist() == want["ids"]
        assert got.positions.tolist() == want["positions"]
        assert got.attn.slot_mapping.tolist() == want["slots"]
        assert got.sample_rows.tolist() == want["sample_rows"]
        assert got.sample_items == want["sample_items"]
        assert got.attn.num_decode == want["num_decode"]
        if want["num_decode"]:
            assert got.attn.decode is not None
            assert got.attn.decode.block_tables.tolist() == want["tables"]
            assert torch.equal(got.attn.decode.bias, want["bias"])
        checked["steps"] += 1
        kinds = {n > 1 for _, n in batch.items}
        checked["mixed"] += kinds == {True, False}
        checked["decode_only"] += kinds == {False}
        checked["no_sample"] += not want["sample_rows"]
        return got

    runner.prepare = checking_prepare
    shared = list(range(100, 140))  # a 40-token opening: later prompts hit the prefix cache
    params = [
        SamplingParams(max_tokens=12, temperature=0, ignore_eos=True),
        SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, prompt_logprobs=2),
        SamplingParams(max_tokens=9, temperature=0.8, top_k=20, seed=3, ignore_eos=True),
    ]
    llm.submit(list(range(300, 450)), params[0])  # alone: chunks that sample nothing
    llm.step()
    for wave in range(3):
        for i in range(6):
            prompt = shared + [200 + 7 * wave + i] * (3 + 11 * i)
            llm.submit(prompt, params[i % 3])
        for _ in range(4):
            llm.step()
    while llm.has_unfinished():
        llm.step()
    assert checked["mixed"] > 3 and checked["decode_only"] > 3 and checked["no_sample"], checked


def test_a_step_that_admits_a_prompt_builds_its_decoding_rows_as_arrays(make_llm: Any) -> None:
    """Decoding rows that all sample take the array path also in a step with a prompt chunk:
    only the chunk is looked at row by row (each row-by-row call costs the worker's step loop
    about a µs, and with requests arriving, about every other step has a chunk)."""
    llm = make_llm(max_num_seqs=8)
    runner = llm.core.runner
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    for i in range(3):
        llm.submit([10 + i] * 20, params)
    llm.step()  # the three prompts
    llm.step()  # decoding
    llm.submit(list(range(50, 70)), params)  # the next step: 3 decoding rows and this chunk
    calls: list[int] = []
    row_outputs = runner._row_outputs

    def counting(batch: ScheduledBatch, item: int, *rest: Any) -> None:
        calls.append(item)
        row_outputs(batch, item, *rest)

    runner._row_outputs = counting
    prepare = runner.prepare
    seen: list[StepInputs] = []

    def keeping(batch: ScheduledBatch, previous: Any = None) -> StepInputs:
        seen.append(prepare(batch, previous))
        return seen[-1]

    runner.prepare = keeping
    llm.step()
    (got,) = seen
    assert got.attn.num_decode == 3 and calls == [3]  # the chunk (item 3) alone, row by row
    assert got.sample_rows.tolist() == [0, 1, 2, 3 + 20 - 1] and got.sample_items == [0, 1, 2, 3]
