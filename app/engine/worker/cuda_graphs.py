"""Decode steps through captured CUDA graphs, one per batch size (nano-vllm's recipe).

A decode-only step of B rows is padded up to the next captured size bs: static buffers take the
step's ids, positions, cache slots, block tables and attention bias, the graph replays, and the
first B rows of the static logits are sampled. The block tables are a static (bs, max_blocks)
input, so one graph serves every step of that batch size whatever blocks its sequences hold:
attention gathers all max_blocks blocks of each row and the bias masks what lies past its
length. Padding rows write their key and value to the scratch block (attention.NULL_BLOCK,
never handed to a sequence) and attend to its position 0 only, so they touch nothing live.

With capture=False the same padded, static path runs eagerly: that is how CPU tests check the
padding logic that the GPU relies on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from app.model.attention import NULL_BLOCK, AttnBatch, DecodeRows, KVCache
from app.model.gpt2 import GPT2

log = logging.getLogger(__name__)


@dataclass
class _Graph:
    input_ids: torch.Tensor  # (bs,)
    positions: torch.Tensor  # (bs,)
    slot_mapping: torch.Tensor  # (bs,)
    block_tables: torch.Tensor  # (bs, max_blocks)
    bias: torch.Tensor  # (bs, 1, max_blocks * block_size)
    logits: torch.Tensor | None  # (bs, V), written by the graph
    graph: torch.cuda.CUDAGraph | None


class StaticDecode:
    def __init__(
        self, model: GPT2, kv: KVCache, batch_sizes: list[int], max_blocks: int, capture: bool
    ) -> None:
        self.model, self.kv, self.max_blocks = model, kv, max_blocks
        self.capture = capture
        device, dtype = kv.k.device, kv.k.dtype
        width = max_blocks * kv.block_size
        self.batch_sizes = sorted(b for b in set(batch_sizes) if b >= 1)
        self.graphs: dict[int, _Graph] = {}
        pool = None
        for bs in reversed(self.batch_sizes):  # largest first, so smaller ones reuse its memory
            g = _Graph(
                input_ids=torch.zeros(bs, dtype=torch.long, device=device),
                positions=torch.zeros(bs, dtype=torch.long, device=device),
                slot_mapping=torch.zeros(bs, dtype=torch.long, device=device),
                block_tables=torch.zeros(bs, max_blocks, dtype=torch.long, device=device),
                bias=torch.zeros(bs, 1, width, dtype=dtype, device=device),
                logits=None,
                graph=None,
            )
            if capture:
                g.graph = torch.cuda.CUDAGraph()
                self._forward(g)  # warm-up outside the graph (allocator, kernels)
                torch.cuda.synchronize()
                with torch.cuda.graph(g.graph, pool=pool):
                    g.logits = self._forward(g)
                pool = g.graph.pool()
            self.graphs[bs] = g
        if capture:
            log.info("captured CUDA graphs for decode batch sizes %s", self.batch_sizes)

    def can_run(self, num_rows: int, attn: AttnBatch) -> bool:
        d = attn.decode
        return (
            not attn.prefills
            and d is not None
            and d.block_tables.shape[1] <= self.max_blocks
            and num_rows <= (self.batch_sizes[-1] if self.batch_sizes else 0)
        )

    @torch.inference_mode()
    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttnBatch
    ) -> torch.Tensor:
        """Logits (B, V) for a decode-only step of B rows (can_run said yes)."""
        d = attn.decode
        assert d is not None
        b, width = d.block_tables.shape
        bs = next(s for s in self.batch_sizes if s >= b)
        g = self.graphs[bs]
        g.input_ids.zero_()
        g.input_ids[:b] = input_ids
        g.positions.zero_()
        g.positions[:b] = positions
        g.slot_mapping.fill_(NULL_BLOCK * self.kv.block_size)  # padding rows: the scratch block
        g.slot_mapping[:b] = attn.slot_mapping
        g.block_tables.fill_(NULL_BLOCK)
        g.block_tables[:b, :width] = d.block_tables
        g.bias.fill_(float("-inf"))
        g.bias[:, :, 0] = 0.0  # padding rows see their own position 0 only
        g.bias[:b, :, : d.bias.shape[-1]] = d.bias
        if g.graph is None:
            return self._forward(g)[:b]
        g.graph.replay()
        assert g.logits is not None
        return g.logits[:b]

    def _forward(self, g: _Graph) -> torch.Tensor:
        bs = g.input_ids.shape[0]
        rows = DecodeRows(block_tables=g.block_tables, positions=g.positions, bias=g.bias)
        batch = AttnBatch(slot_mapping=g.slot_mapping, num_decode=bs, decode=rows)
        hidden = self.model(g.input_ids, g.positions, batch, self.kv)
        return self.model.compute_logits(hidden)
