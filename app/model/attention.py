"""Attention over a paged KV cache for a flattened batch of sequences.

A step's tokens are one flat (N, ...) batch: first one row per *decode* sequence (a single new
token), then each *prefill chunk* as a run of consecutive rows. The cache is a pool of fixed-size
blocks; each sequence's block table lists the blocks that hold its positions in order (position p
lives in block table[p // block_size] at offset p % block_size). Every row's key and value are
written first, at its slot (block * block_size + offset: `slot_mapping`); then each row attends
over its sequence's blocks.

A layer's cache is laid out (heads, blocks, block_size, head_dim) so that gathering whole blocks
gives (heads, sequences, length, head_dim) with no further copy: decode attention is then two
batched matrix products with the heads and sequences as batch dimensions. The gather copies each
row's context once (a 16-token block is one 4 KB memcpy per head at head_dim 64); the products
then read it contiguously.

Physical block 0 is never handed to a sequence (the block pool starts at 1): padded rows of a
CUDA graph and unused block-table entries point at it, so they can write and read it freely.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

NULL_BLOCK = 0  # scratch block: padding rows write here, nothing live reads it


class GatherBuffers:
    """Two reusable buffers the decode gather copies keys and values into, grown on demand.
    On CPU a fresh multi-megabyte tensor per layer paid its page faults every time: gathering
    32 rows x 96 tokens of GPT-2 124M took 2.8 ms into a new tensor and 0.4 ms into a reused
    one, 24 times a step. (CUDA's caching allocator has no such cost; graphs use none.)"""

    def __init__(self) -> None:
        self.flat: list[torch.Tensor | None] = [None, None]

    def take(self, which: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        numel = 1
        for n in shape:
            numel *= n
        buf = self.flat[which]
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype:
            buf = self.flat[which] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf[:numel].view(shape)


@dataclass
class DecodeRows:
    """Rows [0, n) of the batch: one token each, attending over its own blocks."""

    block_tables: torch.Tensor  # (n, max_blocks) long: each row's blocks, NULL_BLOCK-padded
    positions: torch.Tensor  # (n,) long: position of each row's token
    # (n, 1, L) float, L = max_blocks * block_size: 0 where visible, -inf not. None: made from
    # the positions on the device by the model (with_decode_bias), inside a CUDA graph's replay
    # when one runs, rather than by the host before it.
    bias: torch.Tensor | None = None
    buffers: GatherBuffers | None = None  # where the gather copies to; None: fresh tensors


@dataclass
class PrefillChunk:
    """A run of `length` consecutive rows for one sequence, at positions [start, start+length);
    `blocks` hold its positions [0, start + length)."""

    start: int
    length: int
    blocks: torch.Tensor  # (num_blocks,) long


@dataclass
class AttnBatch:
    """How the rows of one forward pass map onto sequences and cache blocks."""

    slot_mapping: torch.Tensor  # (N,) long: where each row's key and value are written
    num_decode: int = 0
    decode: DecodeRows | None = None
    prefills: list[PrefillChunk] = field(default_factory=list)


class KVCache:
    """Every layer's keys and values, allocated once: (layers, heads, blocks, block_size, D)."""

    def __init__(
        self,
        n_layer: int,
        num_blocks: int,
        n_head: int,
        block_size: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (n_layer, n_head, num_blocks, block_size, head_dim)
        # Zeros, not empty: masked positions are still read, and garbage NaNs would leak
        # through softmax(-inf) * V.
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size

    @property
    def num_blocks(self) -> int:
        return self.k.shape[2]

    @property
    def num_bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


def bytes_per_block(
    n_layer: int, n_head: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> int:
    """Keys and values of one block across every layer."""
    return (
        2 * n_layer * n_head * block_size * head_dim * torch.empty((), dtype=dtype).element_size()
    )


def slots_of(table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of positions [start, end) of a sequence with block table `table`."""
    return [table[p // block_size] * block_size + p % block_size for p in range(start, end)]


def decode_bias(
    lengths: torch.Tensor, width: int, dtype: torch.dtype
) -> torch.Tensor:  # (n, 1, width)
    """0 where key position < the row's context length, -inf elsewhere."""
    visible = torch.arange(width, device=lengths.device) < lengths.unsqueeze(1)
    bias = torch.zeros(visible.shape, dtype=dtype, device=lengths.device)
    return bias.masked_fill_(~visible, float("-inf")).unsqueeze(1)


def with_decode_bias(batch: AttnBatch, block_size: int, dtype: torch.dtype) -> AttnBatch:
    """`batch` with its decode rows' bias made from their positions if it has none (once a
    step, for every layer)."""
    d = batch.decode
    if d is None or d.bias is not None:
        return batch
    bias = decode_bias(d.positions + 1, d.block_tables.shape[1] * block_size, dtype)
    return dataclasses.replace(batch, decode=dataclasses.replace(d, bias=bias))


def attend(
    q: torch.Tensor,  # (N, H, D)
    k: torch.Tensor,  # (N, H, D)
    v: torch.Tensor,  # (N, H, D)
    cache_k: torch.Tensor,  # (H, blocks, block_size, D), this layer
    cache_v: torch.Tensor,
    batch: AttnBatch,
) -> torch.Tensor:
    """Write this step's keys/values into the cache, then attend; returns (N, H, D)."""
    h, _, _, d = cache_k.shape
    cache_k.view(h, -1, d)[:, batch.slot_mapping] = k.transpose(0, 1)
    cache_v.view(h, -1, d)[:, batch.slot_mapping] = v.transpose(0, 1)
    out = torch.empty_like(q)
    nd = batch.num_decode
    if batch.decode is not None and nd:
        out[:nd] = _attend_decode(q[:nd], cache_k, cache_v, batch.decode)
    row = nd
    for chunk in batch.prefills:
        rows = slice(row, row + chunk.length)
        out[rows] = _attend_prefill(q[rows], k[rows], v[rows], cache_k, cache_v, chunk)
        row += chunk.length
    return out


def gather(
    cache: torch.Tensor, block_tables: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """(H, blocks, bs, D) cache, (n, m) tables -> (H, n, m * bs, D), one copy (into `out`,
    shaped (H, n * m, bs, D), when given)."""
    h, _, bs, d = cache.shape
    n, m = block_tables.shape
    if out is None:
        return cache.index_select(1, block_tables.reshape(-1)).view(h, n, m * bs, d)
    return torch.index_select(cache, 1, block_tables.reshape(-1), out=out).view(h, n, m * bs, d)


def _attend_decode(
    q: torch.Tensor,  # (n, H, D)
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    d: DecodeRows,
) -> torch.Tensor:
    out_k = out_v = None
    if d.buffers is not None:
        h, _, bs, hd = cache_k.shape
        shape = (h, d.block_tables.numel(), bs, hd)
        out_k, out_v = d.buffers.take(0, shape, cache_k), d.buffers.take(1, shape, cache_v)
    keys = gather(cache_k, d.block_tables, out_k)  # (H, n, L, D)
    values = gather(cache_v, d.block_tables, out_v)
    # Two batched mat-vec products: for one query row this ran faster on CPU than SDPA's
    # flash kernel, and the additive mask is built once per step rather than once per layer.
    qh = q.transpose(0, 1).unsqueeze(2)  # (H, n, 1, D)
    scores = torch.matmul(qh, keys.transpose(-1, -2))  # (H, n, 1, L)
    assert d.bias is not None  # made by GPT2.forward (with_decode_bias) when not given
    scores = scores.mul_(q.shape[-1] ** -0.5).add_(d.bias)
    o = torch.matmul(scores.softmax(dim=-1), values).squeeze(2)  # (H, n, D)
    return o.transpose(0, 1)


def _attend_prefill(
    q: torch.Tensor,  # (T, H, D)
    k: torch.Tensor,
    v: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    c: PrefillChunk,
) -> torch.Tensor:
    end = c.start + c.length
    qc = q.transpose(0, 1).unsqueeze(0)  # (1, H, T, D)
    if c.start == 0:  # nothing cached before the chunk: its own keys are the whole context
        keys = k.transpose(0, 1).unsqueeze(0)
        values = v.transpose(0, 1).unsqueeze(0)
        o = F.scaled_dot_product_attention(qc, keys, values, is_causal=True)
    else:  # a later chunk or a cached prefix: row i sees every position up to start + i
        table = c.blocks.unsqueeze(0)
        keys = gather(cache_k, table)[:, :, :end].transpose(0, 1)  # (1, H, end, D)
        values = gather(cache_v, table)[:, :, :end].transpose(0, 1)
        query_pos = torch.arange(c.start, end, device=q.device).unsqueeze(1)
        key_pos = torch.arange(end, device=q.device).unsqueeze(0)
        o = F.scaled_dot_product_attention(qc, keys, values, attn_mask=key_pos <= query_pos)
    return o[0].transpose(0, 1)  # (T, H, D)
