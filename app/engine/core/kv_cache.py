"""KV bookkeeping: which sequence holds which cache slot. Pure Python; storage is in the runner.

Occupied slots are kept packed at [0, num_used): when a sequence leaves, the one in the highest
slot moves into the hole. The runner copies that slot's cached keys/values before the next forward
pass, so decode attention can read cache[:num_used] in place (see app/model/attention.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.core.sequence import Sequence


@dataclass(frozen=True)
class SlotMove:
    """Copy the first `length` cached positions of slot src into slot dst."""

    src: int
    dst: int
    length: int


class SlotAllocator:
    def __init__(self, num_slots: int, slot_len: int) -> None:
        self.num_slots = num_slots
        self.slot_len = slot_len
        self.owners: list[Sequence | None] = [None] * num_slots
        self.num_used = 0

    @property
    def num_free(self) -> int:
        return self.num_slots - self.num_used

    @property
    def usage(self) -> float:
        """Fraction of slots held, 0..1."""
        return self.num_used / self.num_slots

    def allocate(self, seq: Sequence) -> None:
        if self.num_used == self.num_slots:
            raise RuntimeError("no free KV slot: the scheduler must check num_free first")
        if seq.num_tokens + seq.params.max_tokens - seq.num_output_tokens > self.slot_len:
            raise RuntimeError("sequence cannot fit a slot: validation must reject it earlier")
        seq.slot = self.num_used
        self.owners[self.num_used] = seq
        self.num_used += 1

    def free(self, seq: Sequence) -> SlotMove | None:
        """Release seq's slot; returns the move that keeps slots packed, if one is needed."""
        hole, last = seq.slot, self.num_used - 1
        if hole is None or self.owners[hole] is not seq:
            raise RuntimeError(f"{seq.request_id} does not hold a slot")
        seq.slot = None
        self.owners[hole] = None
        self.num_used -= 1
        if hole == last:
            return None
        moved = self.owners[last]
        assert moved is not None and moved.slot == last
        self.owners[last], self.owners[hole] = None, moved
        moved.slot = hole
        return SlotMove(src=last, dst=hole, length=moved.num_computed)
