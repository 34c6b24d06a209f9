"""The prefill pacer turns measured step times into the long-prompt chunk size."""

from __future__ import annotations

import pytest

from app.engine.core.prefill_pacer import PrefillPacer, StepCost, fit_step_cost


def _pacer() -> PrefillPacer:
    return PrefillPacer(initial=64, low=16, high=512)


def _feed(pacer: PrefillPacer, cost: StepCost, steps: list[tuple[int, int]]) -> None:
    for rows, tokens in steps:
        seconds = cost.base + cost.per_row * rows + cost.per_token * tokens
        pacer.observe(seconds, num_decode=rows, num_prefill=tokens)


# Steps of a server coming up: a lone stream, idle prefills of two sizes, then mixed steps.
VARIED = [(0, 32), (1, 0), (1, 0), (0, 512), (16, 40), (17, 0), (31, 16), (32, 0)]


def test_starts_from_the_initial_limit_until_the_costs_are_told_apart() -> None:
    pacer = _pacer()
    assert pacer.limit == 64
    cost = StepCost(base=0.06, per_row=0.0035, per_token=0.002)
    _feed(pacer, cost, [(32, 0), (32, 0), (32, 100)])  # one batch size: base and rows blur
    assert pacer.cost is None and pacer.limit == 64


@pytest.mark.parametrize(
    ("cost", "expected"),
    [
        # A 2-core CPU at 32 streams (fitted there: 55-62 ms base, 3-5 ms a row, 2.1 ms a
        # prompt token): a decode step is worth ~85 prompt tokens, chunks of 1.5x that.
        (StepCost(base=0.06, per_row=0.0035, per_token=0.002), round(1.5 * 0.172 / 0.002)),
        # Prompt tokens nearly free (a GPU): capped by the step budget.
        (StepCost(base=0.008, per_row=0.00005, per_token=0.00001), 512),
        # Prompt tokens dearer than a decode step: the floor.
        (StepCost(base=0.01, per_row=0.0001, per_token=0.01), 16),
    ],
)
def test_chunk_is_one_and_a_half_decode_steps_of_prompt(cost: StepCost, expected: int) -> None:
    pacer = _pacer()
    _feed(pacer, cost, VARIED)
    assert pacer.cost is not None
    assert pacer.cost.per_token == pytest.approx(cost.per_token)
    assert pacer.cost.decode_step(32) == pytest.approx(cost.decode_step(32))
    assert pacer.limit == expected


def test_the_decode_step_is_that_of_the_rows_decoding_now() -> None:
    pacer = _pacer()
    cost = StepCost(base=0.06, per_row=0.0035, per_token=0.002)
    _feed(pacer, cost, VARIED)
    at_32 = pacer.limit
    _feed(pacer, cost, [(2, 0)])  # most streams finished: a cheaper step, smaller chunks
    assert pacer.limit == round(1.5 * cost.decode_step(2) / 0.002) < at_32


def test_a_burst_of_arrivals_does_not_inflate_the_token_cost() -> None:
    # Step times measured on a 2-core CPU: a warm-up request alone, then 32 short prompts at
    # once. Taking p as seconds / tokens of the idle 32-token prefill gave 4.3 ms a token (it
    # carries the step's fixed cost); charging the 16-row steps' growth to their prompt tokens
    # gave 5.8 ms. Both made the chunk smaller than one 32-token prompt, and the burst was let
    # in one prompt per step (4.1 s to the last first token instead of 2.2 s).
    pacer = _pacer()
    for seconds, rows, tokens in [
        (0.137, 0, 32),
        (0.062, 1, 0),
        (0.061, 1, 0),
        (0.059, 1, 0),
        (1.187, 0, 512),
        (1.092, 16, 496),
        (0.213, 31, 16),
    ]:
        pacer.observe(seconds, num_decode=rows, num_prefill=tokens)
    assert pacer.cost is not None
    assert 0.0019 < pacer.cost.per_token < 0.0024  # the marginal cost, about 2.1 ms
    assert pacer.limit > 32  # a 32-token prompt counts as short and goes whole


def test_a_steady_batch_keeps_the_last_fit() -> None:
    pacer = _pacer()
    cost = StepCost(base=0.06, per_row=0.0035, per_token=0.002)
    _feed(pacer, cost, VARIED)
    limit = pacer.limit
    _feed(pacer, cost, [(32, 0)] * (PrefillPacer.WINDOW + 5))  # nothing to tell them apart
    assert len(pacer.steps) == PrefillPacer.WINDOW
    assert fit_step_cost(pacer.steps) is None and pacer.equations.solve() is None
    assert pacer.limit == limit


def test_a_fit_with_a_negative_cost_is_refused() -> None:
    # Noise can make two idle prefills and a lone decode step imply a negative cost per row.
    steps = [(0, 32, 0.137), (1, 0, 0.060), (0, 512, 1.2)]
    assert fit_step_cost(steps) is None
    assert fit_step_cost([*steps, (16, 0, 0.135), (32, 0, 0.17)]) is not None


def test_a_batch_that_barely_changes_keeps_the_last_fit() -> None:
    # 31-33 rows with occasional prompts: the rows hardly vary, so a per-row cost fitted to
    # them is noise; the window says nothing new and the earlier fit stands.
    cost = StepCost(base=0.06, per_row=0.0035, per_token=0.002)
    steady = [(31 + i % 3, 120 if i % 5 == 0 else 0) for i in range(PrefillPacer.WINDOW)]
    noisy = [
        (r, t, cost.base + cost.per_row * r + cost.per_token * t + 0.01 * (-1) ** i)
        for i, (r, t) in enumerate(steady)
    ]
    assert fit_step_cost(noisy) is None


def test_the_windowed_sums_equal_a_fit_of_the_window() -> None:
    # The pacer adds and removes steps from its sums as the window slides; what it solves must
    # be what a fresh fit of the steps still in the window gives.
    pacer = _pacer()
    shapes = [(i % 33, (i * 37) % 200) for i in range(300)]
    noisy = [
        (r, t, 0.05 + 0.004 * r + 0.002 * t + 0.003 * (i % 7)) for i, (r, t) in enumerate(shapes)
    ]
    for rows, tokens, seconds in noisy:
        pacer.observe(seconds, num_decode=rows, num_prefill=tokens)
    window = fit_step_cost(noisy[-PrefillPacer.WINDOW :])
    assert window is not None and pacer.cost is not None
    for got, want in zip(
        (pacer.cost.base, pacer.cost.per_row, pacer.cost.per_token),
        (window.base, window.per_row, window.per_token),
        strict=True,
    ):
        assert got == pytest.approx(want, rel=1e-9)
