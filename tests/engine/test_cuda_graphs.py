"""The CUDA-graph decode path's inputs, run eagerly on CPU (capture=False): what padding rows
hold and which graph a step picks. Token-level equality with the plain path is in
test_greedy_batch.py."""

from __future__ import annotations

from pathlib import Path

import torch

from app.engine.worker.cuda_graphs import StaticDecode
from app.model.attention import AttnBatch, DecodeRows, KVCache, decode_bias
from app.model.gpt2 import GPT2
from app.model.weights import load_gpt2

BLOCK = 16


def _step(rows: int, width: int, first_block: int) -> tuple[torch.Tensor, torch.Tensor, AttnBatch]:
    """A decode step of `rows` rows, each at the last position of `width` blocks of its own."""
    tables = torch.arange(rows * width).view(rows, width) + first_block
    positions = torch.full((rows,), width * BLOCK - 1)
    slots = tables[:, -1] * BLOCK + BLOCK - 1
    bias = decode_bias(positions + 1, width * BLOCK, torch.float32)
    decode = DecodeRows(block_tables=tables, positions=positions, bias=bias)
    ids = torch.arange(rows) + 100
    return ids, positions, AttnBatch(slot_mapping=slots, num_decode=rows, decode=decode)


@torch.inference_mode()
def test_padding_rows_are_zeros_after_a_fuller_step(tiny_model_dir: Path) -> None:
    """A step of 5 rows after one of 8 in the same graph: rows 5-7 hold token 0 at position 0,
    slot 0 and block 0 (the scratch block), not what the 8-row step left there (a stale slot
    would write a padding row's key and value over a live sequence's); the 5 rows' logits
    are those of the plain path."""
    model: GPT2 = load_gpt2(tiny_model_dir, torch.float32, torch.device("cpu"))
    c = model.config
    kv = KVCache(c.n_layer, 64, c.n_head, BLOCK, c.head_dim, torch.float32, torch.device("cpu"))
    static = StaticDecode(model, kv, [8], max_blocks=4, capture=False, widths=[2])
    static.run(*_step(8, 2, first_block=1))
    ids, positions, attn = _step(5, 2, first_block=20)
    got = static.run(ids, positions, attn)
    g = static.graphs[(8, 2)]
    for name in ("input_ids", "positions", "slot_mapping", "block_tables"):
        assert not getattr(g, name)[5:].any(), name
    assert torch.equal(g.block_tables[:5], attn.decode.block_tables)  # type: ignore[union-attr]
    _, _, again = _step(5, 2, first_block=20)  # the same keys and values written again
    want = model.compute_logits(model(ids, positions, again, kv))
    torch.testing.assert_close(got, want)


def test_a_step_runs_in_the_narrowest_graph_that_holds_it(tiny_model_dir: Path) -> None:
    model: GPT2 = load_gpt2(tiny_model_dir, torch.float32, torch.device("cpu"))
    c = model.config
    kv = KVCache(c.n_layer, 8, c.n_head, BLOCK, c.head_dim, torch.float32, torch.device("cpu"))
    static = StaticDecode(model, kv, [1, 4, 8], max_blocks=64, capture=False, widths=[8, 16])
    assert static.widths == [8, 16, 64]  # max_blocks always captured
    assert static.graph_for(1, 1) == (1, 8)
    assert static.graph_for(2, 8) == (4, 8)
    assert static.graph_for(5, 9) == (8, 16)
    assert static.graph_for(8, 17) == (8, 64)
    assert static.graph_for(4, 64) == (4, 64)
