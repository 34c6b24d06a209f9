"""Decode steps through captured CUDA graphs, one per batch size and context width.

A decode-only step of B rows whose longest context spans W blocks is padded up to the captured
graph of the next batch size bs >= B and the next context width w >= W: static buffers take the
step's ids, positions, cache slots and block tables, the graph replays, and the first B rows of
the static logits are sampled. The attention bias is made from the positions inside the graph
(attention.with_decode_bias), so no host work or copy builds it. Attention in a graph gathers
all w blocks of each row and the bias masks what lies past its length, so the width matters: one
width of max_model_len made every step gather and multiply 1,024 positions a row however short
its sequences were. Widths double from MIN_CONTEXT_TOKENS up to max_model_len (128, 256, 512,
1,024 at GPT-2's 1,024 positions), so a step reads at most twice its real context (or 128
tokens), at the price of a few graphs per batch size.

Padding rows are all zeros: token 0 at position 0, written to slot 0 and reading block 0, the
scratch block (attention.NULL_BLOCK, never handed to a sequence), so they touch nothing live;
position 0 makes their bias see that one position. One zero fill and four copies fill a graph's
inputs before it replays.

With capture=False the same padded, static path runs eagerly: that is how CPU tests check the
padding logic that the GPU relies on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from app.engine.worker.device import inference
from app.model.attention import NULL_BLOCK, AttnBatch, DecodeRows, KVCache
from app.model.gpt2 import GPT2

log = logging.getLogger(__name__)
# Padding is one zero fill of a graph's inputs: slot 0 and block 0 must be the scratch block.
assert NULL_BLOCK == 0
# The narrowest captured context: below it a width costs little to gather and multiply, and
# each further width is one more graph per batch size (capture time, logits memory).
MIN_CONTEXT_TOKENS = 128


def context_widths(max_blocks: int, block_size: int) -> list[int]:
    """Captured context widths in blocks, ascending: the powers of two below max_blocks that
    span at least MIN_CONTEXT_TOKENS, then max_blocks itself."""
    widths = [max_blocks]
    width = 1
    while width < max_blocks:
        if width * block_size >= MIN_CONTEXT_TOKENS:
            widths.insert(-1, width)
        width *= 2
    return widths


@dataclass
class _Graph:
    """A graph's inputs: views of one zero-padded buffer that every width of its batch size
    shares (ids, positions and slots of bs rows, then a (bs, width) block table)."""

    inputs: torch.Tensor  # the whole buffer: what run() zeroes before it copies a step in
    input_ids: torch.Tensor  # (bs,)
    positions: torch.Tensor  # (bs,)
    slot_mapping: torch.Tensor  # (bs,)
    block_tables: torch.Tensor  # (bs, width)
    logits: torch.Tensor | None  # (bs, V), written by the graph
    graph: torch.cuda.CUDAGraph | None


class StaticDecode:
    def __init__(
        self,
        model: GPT2,
        kv: KVCache,
        batch_sizes: list[int],
        max_blocks: int,
        capture: bool,
        widths: list[int] | None = None,
    ) -> None:
        """Graphs for every batch size x context width in blocks (by default context_widths;
        max_blocks, which every step fits, always among them)."""
        self.model, self.kv, self.max_blocks = model, kv, max_blocks
        chosen = widths or context_widths(max_blocks, kv.block_size)
        self.widths = sorted({*chosen, max_blocks})
        assert self.widths[0] >= 1 and self.widths[-1] == max_blocks, self.widths
        self.batch_sizes = sorted(b for b in set(batch_sizes) if b >= 1)
        self.graphs: dict[tuple[int, int], _Graph] = {}
        started = time.perf_counter()
        pool = None
        # Largest first, so smaller graphs reuse its memory. One input buffer per batch size,
        # shared by its widths (one graph runs at a time, and run() fills the whole buffer
        # before it replays).
        for bs in reversed(self.batch_sizes):
            inputs = torch.zeros(bs * (3 + max_blocks), dtype=torch.long, device=kv.k.device)
            for width in reversed(self.widths):
                g = _views(inputs, bs, width)
                if capture:
                    g.graph = torch.cuda.CUDAGraph()
                    self._forward(g)  # warm-up outside the graph (allocator, kernels)
                    torch.cuda.synchronize()
                    with torch.cuda.graph(g.graph, pool=pool):
                        g.logits = self._forward(g)
                    pool = g.graph.pool()
                self.graphs[(bs, width)] = g
        if capture:
            log.info(
                "captured %d CUDA graphs in %.1f s: decode batch sizes %s x context widths %s "
                "tokens",
                len(self.graphs),
                time.perf_counter() - started,
                self.batch_sizes,
                [w * kv.block_size for w in self.widths],
            )

    def can_run(self, num_rows: int, attn: AttnBatch) -> bool:
        d = attn.decode
        return (
            not attn.prefills
            and d is not None
            and d.block_tables.shape[1] <= self.max_blocks
            and num_rows <= (self.batch_sizes[-1] if self.batch_sizes else 0)
        )

    def graph_for(self, num_rows: int, width: int) -> tuple[int, int]:
        """The captured (batch size, width) a step of num_rows rows spanning width blocks runs
        in: the smallest of each that fits."""
        return (
            next(s for s in self.batch_sizes if s >= num_rows),
            next(w for w in self.widths if w >= width),
        )

    @inference
    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttnBatch
    ) -> torch.Tensor:
        """Logits (B, V) for a decode-only step of B rows (can_run said yes)."""
        d = attn.decode
        assert d is not None
        b, width = d.block_tables.shape
        g = self.graphs[self.graph_for(b, width)]
        g.inputs.zero_()  # padding rows (see the module's docstring)
        g.input_ids[:b] = input_ids
        g.positions[:b] = positions
        g.slot_mapping[:b] = attn.slot_mapping
        g.block_tables[:b, :width] = d.block_tables
        if g.graph is None:
            return self._forward(g)[:b]
        g.graph.replay()
        assert g.logits is not None
        return g.logits[:b]

    def _forward(self, g: _Graph) -> torch.Tensor:
        bs = g.input_ids.shape[0]
        rows = DecodeRows(block_tables=g.block_tables, positions=g.positions)  # bias: in here
        batch = AttnBatch(slot_mapping=g.slot_mapping, num_decode=bs, decode=rows)
        hidden = self.model(g.input_ids, g.positions, batch, self.kv)
        return self.model.compute_logits(hidden)


def _views(inputs: torch.Tensor, bs: int, width: int) -> _Graph:
    ids, positions, slots = inputs[: 3 * bs].view(3, bs)
    tables = inputs[3 * bs : 3 * bs + bs * width].view(bs, width)
    return _Graph(inputs, ids, positions, slots, tables, logits=None, graph=None)
