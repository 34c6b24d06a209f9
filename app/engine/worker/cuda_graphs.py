"""Decode steps through captured CUDA graphs, one per batch size (nano-vllm's recipe).

A decode-only step whose sequences hold slots [0, B) is padded up to the next captured size bs:
static buffers take the step's ids, positions and attention bias, the graph replays, and the
first B rows of the static logits are sampled. Padding rows attend to position 0 of the free
slots [B, bs) and write only there, so they touch nothing a live sequence reads. Attention spans
the whole slot length so one graph fits every step of that batch size.

With capture=False the same padded, static path runs eagerly: that is how CPU tests check the
padding logic that the GPU relies on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from app.model.attention import AttnBatch, DecodeRows, KVCache
from app.model.gpt2 import GPT2

log = logging.getLogger(__name__)


@dataclass
class _Graph:
    input_ids: torch.Tensor  # (bs,)
    positions: torch.Tensor  # (bs,)
    bias: torch.Tensor  # (bs, 1, 1, max_len)
    logits: torch.Tensor | None  # (bs, V), written by the graph
    graph: torch.cuda.CUDAGraph | None


class StaticDecode:
    def __init__(
        self, model: GPT2, kv: KVCache, batch_sizes: list[int], max_len: int, capture: bool
    ) -> None:
        self.model, self.kv, self.max_len = model, kv, max_len
        self.capture = capture
        device, dtype = kv.k.device, kv.k.dtype
        self.batch_sizes = sorted(b for b in set(batch_sizes) if 1 <= b <= kv.k.shape[1])
        self.graphs: dict[int, _Graph] = {}
        pool = None
        for bs in reversed(self.batch_sizes):  # largest first, so smaller ones reuse its memory
            g = _Graph(
                input_ids=torch.zeros(bs, dtype=torch.long, device=device),
                positions=torch.zeros(bs, dtype=torch.long, device=device),
                bias=torch.zeros(bs, 1, 1, max_len, dtype=dtype, device=device),
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
            and d.rows_are_span
            and num_rows <= (self.batch_sizes[-1] if self.batch_sizes else 0)
        )

    @torch.inference_mode()
    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, V) for a decode-only step of B rows; bias is the step's (B,1,1,L) mask."""
        b = input_ids.shape[0]
        bs = next(s for s in self.batch_sizes if s >= b)
        g = self.graphs[bs]
        g.input_ids.zero_()
        g.input_ids[:b] = input_ids
        g.positions.zero_()
        g.positions[:b] = positions
        g.bias.fill_(float("-inf"))
        g.bias[:, :, :, 0] = 0.0  # padding rows see their own position 0 only
        g.bias[:b, :, :, : bias.shape[-1]] = bias
        if g.graph is None:
            return self._forward(g)[:b]
        g.graph.replay()
        assert g.logits is not None
        return g.logits[:b]

    def _forward(self, g: _Graph) -> torch.Tensor:
        bs = g.input_ids.shape[0]
        rows = DecodeRows(
            slots=torch.arange(bs, device=g.input_ids.device),
            positions=g.positions,
            span=bs,
            max_len=self.max_len,
            bias=g.bias,
            rows_are_span=True,
        )
        hidden = self.model(
            g.input_ids, g.positions, AttnBatch(num_decode=bs, decode=rows), self.kv
        )
        return self.model.compute_logits(hidden)
