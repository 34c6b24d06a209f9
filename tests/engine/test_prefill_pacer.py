"""The prefill pacer turns measured step times into the long-prompt chunk size."""

from __future__ import annotations

import pytest

from app.engine.prefill_pacer import PrefillPacer


def _pacer() -> PrefillPacer:
    return PrefillPacer(initial=64, low=16, high=512, smoothing=1.0)


def test_starts_from_the_initial_limit_until_both_costs_are_measured() -> None:
    pacer = _pacer()
    assert pacer.limit == 64
    pacer.observe(0.200, num_decode=32, num_prefill=0)
    assert pacer.limit == 64  # the decode step is known, a prompt token's cost is not


@pytest.mark.parametrize(
    ("decode_step", "token", "expected"),
    [
        (0.300, 0.002, 225),  # a 2-core CPU at 32 streams: a decode step ~ 150 prompt tokens
        (0.100, 0.002, 75),  # fewer streams, a cheaper decode step: smaller chunks
        (0.010, 0.00001, 512),  # a GPU: prompt tokens nearly free, capped by the step budget
        (0.010, 0.01, 16),  # prompt tokens dearer than a decode step: the floor
    ],
)
def test_chunk_is_one_and_a_half_decode_steps_of_prompt(
    decode_step: float, token: float, expected: int
) -> None:
    pacer = _pacer()
    pacer.observe(decode_step, num_decode=32, num_prefill=0)
    # A mixed step: the decode part plus 100 prompt tokens.
    pacer.observe(decode_step + 100 * token, num_decode=32, num_prefill=100)
    assert pacer.limit == expected


def test_idle_prefill_steps_measure_the_token_cost_too() -> None:
    pacer = _pacer()
    pacer.observe(1.0, num_decode=0, num_prefill=500)  # 2 ms a token
    pacer.observe(0.2, num_decode=16, num_prefill=0)
    assert pacer.limit == 150


def test_smoothing_follows_changes_gradually() -> None:
    pacer = PrefillPacer(initial=64, low=16, high=512, smoothing=0.5)
    pacer.observe(1.0, num_decode=0, num_prefill=500)
    pacer.observe(0.2, num_decode=16, num_prefill=0)
    pacer.observe(0.4, num_decode=32, num_prefill=0)  # d moves half way: 0.3
    assert pacer.limit == 225
