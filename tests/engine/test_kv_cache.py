"""SlotAllocator: which sequence holds which KV slot, kept packed (pure Python, fast; part of
`make mutation`)."""

from __future__ import annotations

import pytest

from app.engine.core.kv_cache import SlotAllocator, SlotMove
from app.engine.core.sequence import Sequence
from app.engine.protocol import SamplingParams


def _seq(rid: str, prompt_len: int = 4, max_tokens: int = 4, computed: int = 0) -> Sequence:
    seq = Sequence(rid, [1] * prompt_len, prompt_len, SamplingParams(max_tokens=max_tokens), 0.0)
    seq.num_computed = computed
    return seq


def test_slots_are_handed_out_in_order_and_counted() -> None:
    slots = SlotAllocator(num_slots=3, slot_len=16)
    assert (slots.num_free, slots.num_used, slots.usage) == (3, 0, 0.0)
    a, b = _seq("a"), _seq("b")
    slots.allocate(a)
    slots.allocate(b)
    assert (a.slot, b.slot) == (0, 1)
    assert slots.owners == [a, b, None]
    assert (slots.num_free, slots.num_used) == (1, 2)
    assert slots.usage == pytest.approx(2 / 3)


def test_allocate_refuses_when_full() -> None:
    slots = SlotAllocator(num_slots=1, slot_len=16)
    slots.allocate(_seq("a"))
    with pytest.raises(
        RuntimeError, match=r"^no free KV slot: the scheduler must check num_free first$"
    ):
        slots.allocate(_seq("b"))


def test_a_sequence_must_fit_its_slot_to_the_last_token() -> None:
    slots = SlotAllocator(num_slots=2, slot_len=16)
    slots.allocate(_seq("fits", prompt_len=10, max_tokens=6))  # exactly 16
    with pytest.raises(
        RuntimeError, match=r"^sequence cannot fit a slot: validation must reject it earlier$"
    ):
        slots.allocate(_seq("long", prompt_len=10, max_tokens=7))
    # Tokens already generated count once: 10 prompt + 2 output + 4 more = 16.
    resumed = _seq("resumed", prompt_len=10, max_tokens=6)
    resumed.token_ids += [5, 5]
    slots.allocate(resumed)
    assert resumed.slot == 1


def test_freeing_the_last_slot_moves_nothing() -> None:
    slots = SlotAllocator(num_slots=3, slot_len=16)
    a, b = _seq("a"), _seq("b")
    slots.allocate(a)
    slots.allocate(b)
    assert slots.free(b) is None
    assert b.slot is None and slots.owners == [a, None, None] and slots.num_used == 1


def test_freeing_a_hole_moves_the_last_sequence_into_it_with_its_cached_length() -> None:
    slots = SlotAllocator(num_slots=4, slot_len=16)
    a, b, c = _seq("a", computed=2), _seq("b", computed=3), _seq("c", computed=5)
    for seq in (a, b, c):
        slots.allocate(seq)
    assert slots.free(a) == SlotMove(src=2, dst=0, length=5)
    assert (a.slot, c.slot, b.slot) == (None, 0, 1)
    assert slots.owners == [c, b, None, None]
    assert slots.num_used == 2
    slots.allocate(a)  # the freed slot at the end is used again
    assert a.slot == 2


def test_freeing_a_sequence_without_a_slot_is_an_error() -> None:
    slots = SlotAllocator(num_slots=2, slot_len=16)
    a, stranger = _seq("a"), _seq("stranger")
    slots.allocate(a)
    with pytest.raises(RuntimeError, match="stranger does not hold a slot"):
        slots.free(stranger)
    stranger.slot = 0  # claims a slot another sequence holds
    with pytest.raises(RuntimeError, match="does not hold a slot"):
        slots.free(stranger)
    assert slots.owners == [a, None] and slots.num_used == 1
