"""Which blocks each sequence holds, and the prefix cache's hits. No torch; the storage is
in the runner (app/model/attention.py), the blocks themselves in block_pool.py.

A sequence's block table lists its blocks in position order. At admission it gets every block
its tokens need (so a chunked prefill never runs out half-way), taking cached blocks for the
longest cached prefix of its tokens when the prefix cache is on; a decoding sequence takes one
more block each time it fills its last (`grow`). After each step the blocks a sequence has just
filled are hashed into the cache (`cache_computed`), generated tokens included, so a later turn
of a chat, whose prompt is the whole conversation, finds the previous turn's answer cached too.

A hit always leaves the sequence's last token to compute: its row gives the logits to sample.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from app.engine.core.block_pool import Block, BlockPool, chain_hash
from app.engine.core.block_table import BlockTableArray
from app.engine.core.sequence import Sequence


@dataclass(frozen=True)
class AdmissionPlan:
    """What admitting a sequence now would take: cached blocks to reuse, new blocks, and
    whether its next uncached block is being computed by a running sequence right now."""

    hits: list[Block]
    num_new_blocks: int
    prefix_in_flight: bool


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.pool = BlockPool(num_blocks)
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        # Hashes of full blocks that running sequences will have computed at the end of their
        # prefill: a request that needs one waits a step for it rather than compute it twice.
        self.in_flight: Counter[int] = Counter()
        self.num_queries = 0  # tokens looked up in the prefix cache at admission, in all
        self.num_hits = 0  # of those, tokens found cached
        # Every block-holding sequence's table, mirrored for the runner (Sequence.kv_row).
        self.tables = BlockTableArray()

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_used(self) -> int:
        return self.pool.num_used

    @property
    def usage(self) -> float:
        """Fraction of blocks held by sequences, 0..1 (cached free blocks do not count)."""
        return self.pool.num_used / self.pool.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def plan(self, seq: Sequence, use_cache: bool) -> AdmissionPlan:
        hits: list[Block] = []
        in_flight = False
        if self.enable_prefix_cache and use_cache:
            parent: int | None = None
            # Full blocks strictly before the last token: that one is always computed.
            for i in range((seq.num_tokens - 1) // self.block_size):
                tokens = self._block_tokens(seq, i)
                block = self.pool.lookup(parent, tokens)
                if block is None:
                    in_flight = chain_hash(parent, tokens) in self.in_flight
                    break
                hits.append(block)
                parent = block.hash
        return AdmissionPlan(hits, self.blocks_for(seq.num_tokens) - len(hits), in_flight)

    def can_admit(self, plan: AdmissionPlan, keep_free: int) -> bool:
        """Whether the plan's new blocks fit with keep_free blocks to spare. A hit on a free
        cached block takes that block out of the free queue, so it counts against the room."""
        revived = sum(1 for b in plan.hits if b.ref_count == 0)
        return self.pool.num_free - revived - plan.num_new_blocks >= keep_free

    def admit(self, seq: Sequence, plan: AdmissionPlan) -> None:
        """Give seq its blocks (the caller checked can_admit); seq.num_computed skips the hits."""
        assert not seq.block_table, f"{seq.request_id} already holds blocks"
        for block in plan.hits:
            self.pool.touch(block)
        new = [self.pool.allocate() for _ in range(plan.num_new_blocks)]
        seq.block_table = [b.block_id for b in plan.hits + new]
        seq.kv_row = self.tables.take_row(seq.block_table)
        seq.block_hashes = [b.hash for b in plan.hits if b.hash is not None]
        seq.num_computed = len(plan.hits) * self.block_size
        self.num_queries += seq.num_tokens
        self.num_hits += seq.num_computed
        if self.enable_prefix_cache:
            seq.pending_hashes = self._hashes(
                seq, len(plan.hits), seq.num_tokens // self.block_size
            )
            self.in_flight.update(seq.pending_hashes)

    def grow(self, seq: Sequence) -> bool:
        """Make room for the key/value of position seq.num_computed; False if no block is free."""
        if seq.num_computed < len(seq.block_table) * self.block_size:
            return True
        if self.pool.num_free == 0:
            return False
        block_id = self.pool.allocate().block_id
        self.tables.append(seq.kv_row, len(seq.block_table), block_id)
        seq.block_table.append(block_id)
        return True

    def cache_computed(self, seq: Sequence) -> None:
        """Hash into the cache every block of seq that is now full and computed."""
        if not self.enable_prefix_cache:
            return
        parent = seq.block_hashes[-1] if seq.block_hashes else None
        for i in range(len(seq.block_hashes), seq.num_computed // self.block_size):
            block = self.pool.block(seq.block_table[i])
            parent = self.pool.cache(block, parent, self._block_tokens(seq, i))
            seq.block_hashes.append(parent)
            if seq.pending_hashes:
                self._settle(seq.pending_hashes.pop(0))

    def free(self, seq: Sequence) -> None:
        """Release seq's blocks (its computed full blocks stay cached until evicted)."""
        self.pool.release(self.pool.block(i) for i in reversed(seq.block_table))
        for h in seq.pending_hashes:
            self._settle(h)
        seq.block_table, seq.block_hashes, seq.pending_hashes = [], [], []
        if seq.kv_row >= 0:
            self.tables.release_row(seq.kv_row)
            seq.kv_row = -1

    def check(self, holders: list[Sequence]) -> None:
        """Raise AssertionError unless the blocks, the hash table and the in-flight prefixes
        agree with `holders`, every sequence that holds blocks."""
        self.pool.check(seq.block_table for seq in holders)
        pending: Counter[int] = Counter()
        for seq in holders:
            assert len(seq.block_table) * self.block_size >= seq.num_computed, seq.request_id
            assert self.tables.matches(seq.kv_row, seq.block_table), seq.request_id
            for i, h in enumerate(seq.block_hashes):
                block = self.pool.block(seq.block_table[i])
                assert block.tokens == self._block_tokens(seq, i) or block.hash != h
            pending.update(seq.pending_hashes)
        assert pending == +self.in_flight, "in-flight prefixes out of step with the sequences"

    def _settle(self, h: int) -> None:
        self.in_flight[h] -= 1
        if self.in_flight[h] <= 0:
            del self.in_flight[h]

    def _block_tokens(self, seq: Sequence, i: int) -> tuple[int, ...]:
        return tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])

    def _hashes(self, seq: Sequence, first: int, end: int) -> list[int]:
        """Chain hashes of full blocks [first, end) of seq (block first's parent is cached)."""
        parent = seq.block_hashes[first - 1] if first else None
        out = []
        for i in range(first, end):
            parent = chain_hash(parent, self._block_tokens(seq, i))
            out.append(parent)
        return out
