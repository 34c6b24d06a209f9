"""Seeded sampling in the Sampler itself: a seeded row draws from a generator keyed by its seed
AND its output index, so each position gets fresh randomness, the same position always gets the
same, and companions in the batch change nothing (CPU: the inverse CDF)."""

from __future__ import annotations

import torch

from app.engine.protocol import SamplingParams
from app.engine.worker.sampler import Sampler, SamplingRow, inverse_cdf

VOCAB = 1000
FLAT = torch.zeros(VOCAB)  # every token equally likely: the draw is the uniform itself


def _sampler() -> Sampler:
    return Sampler(VOCAB, eos_token_id=VOCAB - 1, device=torch.device("cpu"), seed=0)


def _row(seed: int | None, outputs: int, prompt: int = 3, **kw: object) -> SamplingRow:
    params = SamplingParams(seed=seed, max_tokens=64, **kw)  # type: ignore[arg-type]
    return SamplingRow(params, [1] * (prompt + outputs), prompt)


def _draw(rows: list[SamplingRow], logits: torch.Tensor | None = None) -> list[int]:
    if logits is None:
        logits = FLAT.repeat(len(rows), 1)
    chosen, _ = _sampler()(logits, rows)
    return [int(t) for t in chosen]


def test_a_seeded_row_draws_from_its_seed_and_output_index() -> None:
    """The reference: one uniform from torch.Generator seeded with seed * 1_000_003 + index."""
    seed = 1234
    for index in (0, 1, 7, 30):
        g = torch.Generator().manual_seed((seed * 1_000_003 + index) % 2**63)
        u = torch.empty(1, 1).uniform_(generator=g)
        want = int(inverse_cdf(torch.full((1, VOCAB), 1.0 / VOCAB), u)[0])
        assert _draw([_row(seed, index)]) == [want], index


def test_each_output_position_gets_fresh_randomness() -> None:
    tokens = [_draw([_row(1234, index)])[0] for index in range(32)]
    assert len(set(tokens)) >= 28  # 32 draws from 1000 tokens: a repeat or two at most
    # the whole vocabulary is reached, not one narrow band of it
    assert min(tokens) < VOCAB // 4 and max(tokens) > 3 * VOCAB // 4


def test_the_prompt_length_does_not_change_the_draw() -> None:
    assert _draw([_row(5, 4, prompt=2)]) == _draw([_row(5, 4, prompt=40)])


def test_same_seed_and_position_draw_the_same_whatever_the_companions() -> None:
    alone = _draw([_row(99, 5)])[0]
    batch = _draw([_row(None, 0), _row(7, 5), _row(99, 5), _row(99, 6), _row(None, 3)])
    assert batch[2] == alone
    assert batch[3] != alone  # the next position of the same seed: a fresh draw
    assert batch[1] != alone  # another seed at the same position


def test_seeded_rows_follow_the_distribution_they_are_given() -> None:
    logits = torch.full((1, VOCAB), -1e9)
    logits[0, [10, 20]] = 0.0  # only two tokens possible
    draws = {_draw([_row(3, i)], logits)[0] for i in range(40)}
    assert draws == {10, 20}


def test_unseeded_rows_use_the_engines_stream() -> None:
    sampler = _sampler()
    rows = [_row(None, 0) for _ in range(4)]
    first, _ = sampler(FLAT.repeat(4, 1), rows)
    second, _ = sampler(FLAT.repeat(4, 1), rows)
    assert first.tolist() != second.tolist()  # the stream moves on between steps
