"""Our GPT-2 forward against transformers' GPT2LMHeadModel: same logits in fp32."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from app.model.attention import (
    AttnBatch,
    DecodeRows,
    KVCache,
    PrefillChunk,
    decode_bias,
    slots_of,
)
from app.model.gpt2 import GPT2
from app.model.weights import load_gpt2

ATOL = 2e-4


BLOCK = 16


def _kv(model: GPT2, slots: int) -> KVCache:
    """Room for `slots` whole sequences, in 16-token blocks."""
    c = model.config
    blocks = 1 + slots * (c.n_positions // BLOCK)
    return KVCache(
        c.n_layer, blocks, c.n_head, BLOCK, c.head_dim, torch.float32, torch.device("cpu")
    )


def _table(model: GPT2, kv: KVCache, slot: int) -> list[int]:
    """Sequence `slot`'s block table: its blocks scattered over the pool (a fixed shuffle of
    blocks 1..), so attention must follow the table rather than read blocks in order."""
    per_seq = model.config.n_positions // BLOCK
    order = list(range(1, kv.num_blocks))
    random.Random(0).shuffle(order)
    return order[slot * per_seq : (slot + 1) * per_seq]


def _prefill(model: GPT2, kv: KVCache, ids: list[int], slot: int, start: int) -> torch.Tensor:
    n = len(ids) - start
    table = _table(model, kv, slot)
    blocks = torch.tensor(table[: -(-len(ids) // BLOCK)])
    batch = AttnBatch(
        slot_mapping=torch.tensor(slots_of(table, start, len(ids), BLOCK)),
        prefills=[PrefillChunk(start, n, blocks)],
    )
    hidden = model(torch.tensor(ids[start:]), torch.arange(start, len(ids)), batch, kv)
    return model.compute_logits(hidden)


def _decode(
    model: GPT2, kv: KVCache, tokens: list[int], positions: list[int], host_bias: bool = True
) -> torch.Tensor:
    """One decode row per sequence; row i is sequence (slot) i. host_bias False: the model
    makes the attention bias from the positions (as on CUDA)."""
    width = max(-(-(p + 1) // BLOCK) for p in positions)
    tables = [_table(model, kv, i)[:width] for i in range(len(tokens))]
    pos = torch.tensor(positions)
    rows = DecodeRows(
        block_tables=torch.tensor(tables),
        positions=pos,
        bias=decode_bias(pos + 1, width * BLOCK, torch.float32) if host_bias else None,
    )
    slots = [slots_of(t, p, p + 1, BLOCK)[0] for t, p in zip(tables, positions, strict=True)]
    batch = AttnBatch(slot_mapping=torch.tensor(slots), num_decode=len(tokens), decode=rows)
    hidden = model(torch.tensor(tokens), pos, batch, kv)
    return model.compute_logits(hidden)


@pytest.fixture(scope="module", params=["torch", "onednn"])
def model(request: pytest.FixtureRequest, tiny_model_dir: Path) -> GPT2:
    m = load_gpt2(tiny_model_dir, torch.float32, torch.device("cpu"))
    m.set_gemm_backend(request.param)
    return m


@pytest.mark.parametrize("length", [1, 7, 64, 300])
@torch.inference_mode()
def test_prefill_logits_match_transformers(
    model: GPT2, hf_model: GPT2LMHeadModel, length: int
) -> None:
    ids = torch.randint(0, 50257, (length,), generator=torch.Generator().manual_seed(length))
    expected = hf_model(ids.unsqueeze(0)).logits[0]
    got = _prefill(model, _kv(model, 1), ids.tolist(), slot=0, start=0)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)


@torch.inference_mode()
def test_chunked_prefill_equals_one_shot(model: GPT2, hf_model: GPT2LMHeadModel) -> None:
    ids = torch.randint(0, 50257, (120,), generator=torch.Generator().manual_seed(1)).tolist()
    kv = _kv(model, 2)
    parts = [
        _prefill(model, kv, ids[:end], slot=1, start=start)
        for start, end in [(0, 50), (50, 51), (51, 120)]
    ]
    expected = hf_model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(torch.cat(parts), expected, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("host_bias", [True, False])
@torch.inference_mode()
def test_batched_decode_at_different_positions(
    model: GPT2, hf_model: GPT2LMHeadModel, host_bias: bool
) -> None:
    """Three sequences at positions 3, 40 and 200 decode in one batch, each matching HF,
    whether the host or the model makes the attention bias."""
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 50257, (n,), generator=g).tolist() for n in (4, 41, 201)]
    kv = _kv(model, 3)
    for slot, ids in enumerate(seqs):
        _prefill(model, kv, ids[:-1], slot=slot, start=0)
    last = [s[-1] for s in seqs]
    got = _decode(model, kv, last, [len(s) - 1 for s in seqs], host_bias)
    for row, ids in enumerate(seqs):
        expected = hf_model(torch.tensor([ids])).logits[0, -1]
        torch.testing.assert_close(got[row], expected, atol=ATOL, rtol=1e-4)


@torch.inference_mode()
def test_decode_steps_match_transformers(model: GPT2, hf_model: GPT2LMHeadModel) -> None:
    """Eight decode steps after a prefill, each against HF's forward over the whole sequence."""
    ids = torch.randint(0, 50257, (10,), generator=torch.Generator().manual_seed(3)).tolist()
    kv = _kv(model, 1)
    token = int(_prefill(model, kv, ids, slot=0, start=0)[-1].argmax())
    for _ in range(8):
        got = _decode(model, kv, [token], [len(ids)])[0]
        ids.append(token)
        expected = hf_model(torch.tensor([ids])).logits[0, -1]
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)
        token = int(got.argmax())
