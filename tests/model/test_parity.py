"""Our GPT-2 forward against transformers' GPT2LMHeadModel: same logits in fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from app.model.attention import AttnBatch, DecodeRows, KVCache, PrefillChunk
from app.model.gpt2 import GPT2
from app.model.weights import load_gpt2

ATOL = 2e-4


def _kv(model: GPT2, slots: int) -> KVCache:
    c = model.config
    return KVCache(
        c.n_layer, slots, c.n_head, c.n_positions, c.head_dim, torch.float32, torch.device("cpu")
    )


def _prefill(model: GPT2, kv: KVCache, ids: list[int], slot: int, start: int) -> torch.Tensor:
    n = len(ids) - start
    batch = AttnBatch(prefills=[PrefillChunk(slot, start, n)])
    hidden = model(torch.tensor(ids[start:]), torch.arange(start, len(ids)), batch, kv)
    return model.compute_logits(hidden)


def _decode(model: GPT2, kv: KVCache, tokens: list[int], positions: list[int]) -> torch.Tensor:
    span = len(tokens)
    lengths = torch.tensor(positions) + 1
    visible = torch.arange(int(lengths.max())) < lengths.unsqueeze(1)
    bias = torch.zeros(visible.shape).masked_fill_(~visible, float("-inf"))
    rows = DecodeRows(
        torch.arange(span),
        torch.tensor(positions),
        span,
        int(lengths.max()),
        bias.view(span, 1, 1, -1),
        True,
    )
    batch = AttnBatch(num_decode=span, decode=rows)
    hidden = model(torch.tensor(tokens), torch.tensor(positions), batch, kv)
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


@torch.inference_mode()
def test_batched_decode_at_different_positions(model: GPT2, hf_model: GPT2LMHeadModel) -> None:
    """Three sequences at positions 3, 40 and 200 decode in one batch, each matching HF."""
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 50257, (n,), generator=g).tolist() for n in (4, 41, 201)]
    kv = _kv(model, 3)
    for slot, ids in enumerate(seqs):
        _prefill(model, kv, ids[:-1], slot=slot, start=0)
    got = _decode(model, kv, [s[-1] for s in seqs], [len(s) - 1 for s in seqs])
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
