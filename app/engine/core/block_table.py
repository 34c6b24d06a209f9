"""Every running sequence's block table as one array, kept up to date as blocks come and go.

The runner needs, every step, each decoding row's blocks padded to the step's widest context
and the cache slot of each row's new token. Building those from Python lists costs a few µs a
row (a list copy, padding, a 256 x 11 list turned into a tensor); with the tables mirrored in a
NumPy array, indexed by a row each running sequence holds, both are one fancy index
(vLLM's persistent block table works the same way). The lists on Sequence stay the reference:
this array changes only where they change (KVCacheManager.admit, grow, free), and
KVCacheManager.check compares the two. No torch.
"""

from __future__ import annotations

import numpy as np

NULL_BLOCK = 0  # attention.NULL_BLOCK: the scratch block, masked out wherever it is read


class BlockTableArray:
    """(rows, max blocks) int64 array; unused entries are NULL_BLOCK. Grows on demand."""

    def __init__(self, rows: int = 16, width: int = 8) -> None:
        self.array = np.full((rows, width), NULL_BLOCK, dtype=np.int64)
        self._free_rows = list(range(rows - 1, -1, -1))  # popped from the end: row 0 first

    def take_row(self, blocks: list[int]) -> int:
        """A row for a sequence holding `blocks`."""
        if not self._free_rows:
            self._grow_rows()
        row = self._free_rows.pop()
        self._ensure_width(len(blocks))
        self.array[row, : len(blocks)] = blocks
        return row

    def append(self, row: int, index: int, block: int) -> None:
        """Block `block` is entry `index` of the sequence in `row`."""
        self._ensure_width(index + 1)
        self.array[row, index] = block

    def release_row(self, row: int) -> None:
        self.array[row].fill(NULL_BLOCK)  # what later padding reads: the scratch block
        self._free_rows.append(row)

    def matches(self, row: int, blocks: list[int]) -> bool:
        line = self.array[row]
        return line[: len(blocks)].tolist() == blocks and not line[len(blocks) :].any()

    def _grow_rows(self) -> None:
        old = self.array.shape[0]
        extra = np.full((old, self.array.shape[1]), NULL_BLOCK, dtype=np.int64)
        self.array = np.concatenate([self.array, extra])
        self._free_rows.extend(range(2 * old - 1, old - 1, -1))

    def _ensure_width(self, width: int) -> None:
        if width > self.array.shape[1]:
            extra = np.full(
                (self.array.shape[0], max(width, 2 * self.array.shape[1]) - self.array.shape[1]),
                NULL_BLOCK,
                dtype=np.int64,
            )
            self.array = np.concatenate([self.array, extra], axis=1)
