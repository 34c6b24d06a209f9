"""The KV cache's blocks: reference counts, the free queue and the prefix cache's hash table.
Pure Python; the storage is in the runner (app/model/attention.py).

A block is in use while some sequence's block table holds it (ref_count > 0) and free otherwise.
Free blocks wait in `free` in eviction order, least recently freed first: a block that still
holds a computed full block of some prompt keeps its hash there and can be taken back by the next
request that starts the same way (`touch`) until `allocate` evicts it for new content. Blocks
with nothing cached go to the front, so they are reused before any cached block is evicted
(vLLM's and nano-vllm's block pools work the same way).

A full block's hash covers its tokens and, through its parent's hash, every token before it: a
hit on block i means the whole prefix [0, (i + 1) * block_size) is cached. The hash table maps
each hash to one block; the block keeps its tokens and its parent's hash, so a lookup compares
them and a hash collision reads as a miss, never as someone else's keys.

Block ids start at 1: physical block 0 is the runner's scratch block (attention.NULL_BLOCK).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

FIRST_BLOCK = 1


@dataclass(eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None  # set while the block holds a cached full block
    parent_hash: int | None = None
    tokens: tuple[int, ...] = ()


def chain_hash(parent_hash: int | None, tokens: tuple[int, ...]) -> int:
    """The hash of a full block whose prefix hashes to parent_hash (None: the first block).
    Python's hash of a tuple of ints is not salted: the same in every process and run."""
    return hash((parent_hash, tokens))


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"a KV block pool needs at least 1 block, got {num_blocks}")
        self.blocks = [Block(FIRST_BLOCK + i) for i in range(num_blocks)]
        # block id -> None, in eviction order (an OrderedDict is an O(1) removable queue)
        self.free: OrderedDict[int, None] = OrderedDict((b.block_id, None) for b in self.blocks)
        self.cached: dict[int, Block] = {}  # hash -> the block holding it

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        """Blocks allocate() can hand out: unused ones and cached ones it may evict."""
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def block(self, block_id: int) -> Block:
        return self.blocks[block_id - FIRST_BLOCK]

    def allocate(self) -> Block:
        """A block for new content: the front of the free queue, its cached hash evicted."""
        if not self.free:
            raise RuntimeError("no free KV block: the scheduler must check num_free first")
        block = self.block(self.free.popitem(last=False)[0])
        self._evict(block)
        block.ref_count = 1
        return block

    def lookup(self, parent_hash: int | None, tokens: tuple[int, ...]) -> Block | None:
        """The cached block with exactly this prefix, if any."""
        block = self.cached.get(chain_hash(parent_hash, tokens))
        if block is None or block.parent_hash != parent_hash or block.tokens != tokens:
            return None
        return block

    def touch(self, block: Block) -> None:
        """Take a reference to a cached block (a prefix-cache hit); a free one leaves the queue."""
        if block.ref_count == 0:
            del self.free[block.block_id]
        block.ref_count += 1

    def release(self, blocks: Iterable[Block]) -> None:
        """Drop one reference to each block. Pass a sequence's blocks last first: a block
        freed earlier is evicted earlier, and a prefix's tail is the least likely to be hit."""
        for block in blocks:
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block.block_id} released more often than taken")
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block.block_id] = None
                if block.hash is None:  # nothing to keep: reuse it first
                    self.free.move_to_end(block.block_id, last=False)

    def cache(self, block: Block, parent_hash: int | None, tokens: tuple[int, ...]) -> int:
        """Record that `block` now holds the full block `tokens` after the prefix parent_hash;
        returns its hash. If another block already holds that prefix, the table keeps that one
        (this block stays usable by its sequence and is simply not shared)."""
        h = chain_hash(parent_hash, tokens)
        if block.hash is None and h not in self.cached:
            block.hash, block.parent_hash, block.tokens = h, parent_hash, tokens
            self.cached[h] = block
        return h

    def reset_cache(self) -> None:
        """Forget every cached block (the cache off, or a test's fresh start)."""
        for block in list(self.cached.values()):
            self._evict(block)

    def _evict(self, block: Block) -> None:
        if block.hash is not None:
            del self.cached[block.hash]
            block.hash, block.parent_hash, block.tokens = None, None, ()

    def check(self, tables: Iterable[list[int]]) -> None:
        """Raise AssertionError unless the pool agrees with `tables`, the block tables of every
        sequence that holds blocks: each block's ref_count is the number of tables holding it,
        exactly the unreferenced blocks are free, and the hash table and blocks agree."""
        refs = [0] * self.num_blocks
        for table in tables:
            for block_id in table:
                refs[block_id - FIRST_BLOCK] += 1
        for block, n in zip(self.blocks, refs, strict=True):
            assert block.ref_count == n, f"block {block.block_id}: ref {block.ref_count} != {n}"
            assert (block.block_id in self.free) == (n == 0), f"block {block.block_id} leaked"
            if block.hash is not None:
                assert self.cached.get(block.hash) is block, f"block {block.block_id} unindexed"
                assert block.hash == chain_hash(block.parent_hash, block.tokens)
        assert len(self.free) == refs.count(0)
        for h, block in self.cached.items():
            assert block.hash == h, f"hash table entry for block {block.block_id} is stale"
