"""Attention over a static, slot-based KV cache for a flattened batch of sequences.

A step's tokens are one flat (N, ...) batch: first one row per *decode* sequence (a single new
token), then each *prefill chunk* as a run of consecutive rows. Each sequence owns one cache slot
holding its keys and values at positions [0, len). The scheduler keeps occupied slots packed at
[0, span), so decode attention reads keys in place, as the strided view cache[:span, :, :max_len],
with no gather: on a CPU the KV reads of a batch-32 decode step rival the weight reads, and a
gather would double them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class DecodeRows:
    """Rows [0, n) of the batch: one token each, attending over its slot in place."""

    slots: torch.Tensor  # (n,) long: cache slot of each row
    positions: torch.Tensor  # (n,) long: position of each row's token
    span: int  # attention covers cache slots [0, span)
    max_len: int  # longest context among the rows (max position + 1)
    bias: torch.Tensor  # (span, 1, 1, max_len) float: 0 where slot s may attend, -inf elsewhere
    rows_are_span: bool  # row i is slot i for all i < span: no scatter/gather needed


@dataclass
class PrefillChunk:
    """A run of `length` consecutive rows for one sequence, at positions [start, start+length)."""

    slot: int
    start: int
    length: int


@dataclass
class AttnBatch:
    """How the rows of one forward pass map onto sequences and cache slots."""

    num_decode: int = 0
    decode: DecodeRows | None = None
    prefills: list[PrefillChunk] = field(default_factory=list)


class KVCache:
    """Every layer's keys and values, allocated once: (layers, slots, heads, len, head_dim)."""

    def __init__(
        self,
        n_layer: int,
        num_slots: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (n_layer, num_slots, n_head, max_len, head_dim)
        # Zeros, not empty: masked positions are still read, and garbage NaNs would leak
        # through softmax(-inf) * V.
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def num_bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy a sequence's first `length` positions from slot src to slot dst."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]


def attend(
    q: torch.Tensor,  # (N, H, D)
    k: torch.Tensor,  # (N, H, D)
    v: torch.Tensor,  # (N, H, D)
    cache_k: torch.Tensor,  # (slots, H, max_len, D), this layer
    cache_v: torch.Tensor,
    batch: AttnBatch,
) -> torch.Tensor:
    """Write this step's keys/values into the cache, then attend; returns (N, H, D)."""
    out = torch.empty_like(q)
    nd = batch.num_decode
    if batch.decode is not None and nd:
        out[:nd] = _attend_decode(q[:nd], k[:nd], v[:nd], cache_k, cache_v, batch.decode)
    row = nd
    for chunk in batch.prefills:
        rows = slice(row, row + chunk.length)
        out[rows] = _attend_prefill(q[rows], k[rows], v[rows], cache_k, cache_v, chunk)
        row += chunk.length
    return out


def _attend_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    d: DecodeRows,
) -> torch.Tensor:
    cache_k[d.slots, :, d.positions] = k
    cache_v[d.slots, :, d.positions] = v
    if d.rows_are_span:
        q_span = q
    else:  # slots in [0, span) that are not decoding this step get a dummy query
        q_span = q.new_zeros((d.span, *q.shape[1:]))
        q_span[d.slots] = q
    keys = cache_k[: d.span, :, : d.max_len]  # (span, H, L, D), a view
    values = cache_v[: d.span, :, : d.max_len]
    # Two batched mat-vec products: for one query row this ran faster on CPU than SDPA's
    # flash kernel, and the additive mask is built once per step rather than once per layer.
    scores = torch.matmul(q_span.unsqueeze(2), keys.transpose(-1, -2))  # (span, H, 1, L)
    scores = scores.mul_(q.shape[-1] ** -0.5).add_(d.bias)
    o = torch.matmul(scores.softmax(dim=-1), values).squeeze(2)  # (span, H, D)
    return o if d.rows_are_span else o[d.slots]


def _attend_prefill(
    q: torch.Tensor,  # (T, H, D)
    k: torch.Tensor,
    v: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    c: PrefillChunk,
) -> torch.Tensor:
    end = c.start + c.length
    cache_k[c.slot, :, c.start : end] = k.transpose(0, 1)
    cache_v[c.slot, :, c.start : end] = v.transpose(0, 1)
    qc = q.transpose(0, 1).unsqueeze(0)  # (1, H, T, D)
    keys = cache_k[c.slot : c.slot + 1, :, :end]  # (1, H, end, D)
    values = cache_v[c.slot : c.slot + 1, :, :end]
    if c.start == 0:
        o = F.scaled_dot_product_attention(qc, keys, values, is_causal=True)
    else:  # a later chunk: row i sees every cached position up to start + i
        query_pos = torch.arange(c.start, end, device=q.device).unsqueeze(1)
        key_pos = torch.arange(end, device=q.device).unsqueeze(0)
        o = F.scaled_dot_product_attention(qc, keys, values, attn_mask=key_pos <= query_pos)
    return o[0].transpose(0, 1)  # (T, H, D)
