"""The contract's own logic: SamplingParams' range checks at each boundary (accepted at the edge,
refused just past it, naming the field), and the small helpers of the messages (pure Python,
fast; part of `make mutation`)."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine.errors import InvalidRequestError
from app.engine.protocol import (
    FAILURE_OUTCOMES,
    MAX_LOGPROBS,
    FinishReason,
    GenerationDelta,
    GenerationResult,
    Outcome,
    RequestTimings,
    SamplingParams,
    TokenLogprobs,
)

# (field, values accepted at the edges, values refused just past them, the rule's words)
BOUNDARIES: list[tuple[str, list[Any], list[Any], str]] = [
    ("max_tokens", [1], [0, -1], "must be >= 1"),
    ("temperature", [0.0, 100.0], [-1e-9, 100.0001], "must be in [0, 100]"),
    ("top_k", [0, 1], [-1], "must be >= 0 (0 disables)"),
    ("top_p", [1e-9, 1.0], [0.0, 1.0001], "must be in (0, 1]"),
    ("min_p", [0.0, 1.0], [-1e-9, 1.0001], "must be in [0, 1]"),
    ("repetition_penalty", [1e-9, 10.0], [0.0, 10.0001], "must be in (0, 10]"),
    ("presence_penalty", [-2.0, 2.0], [-2.0001, 2.0001], "must be in [-2, 2]"),
    ("frequency_penalty", [-2.0, 2.0], [-2.0001, 2.0001], "must be in [-2, 2]"),
    ("logprobs", [None, 0, MAX_LOGPROBS], [-1, MAX_LOGPROBS + 1], "must be in [0, 20]"),
    ("prompt_logprobs", [None, 0, MAX_LOGPROBS], [-1, MAX_LOGPROBS + 1], "must be in [0, 20]"),
    ("timeout", [None, 1e-9], [0.0, -1.0], "must be > 0 seconds"),
]


@pytest.mark.parametrize(("field", "ok", "bad", "rule"), BOUNDARIES, ids=[b[0] for b in BOUNDARIES])
def test_each_range_is_checked_at_its_edges(
    field: str, ok: list[Any], bad: list[Any], rule: str
) -> None:
    for value in ok:
        assert getattr(SamplingParams(**{field: value}), field) == value
    for value in bad:
        with pytest.raises(InvalidRequestError) as err:
            SamplingParams(**{field: value})
        assert err.value.field == field
        assert err.value.message == f"{rule}, got {value!r}"


def test_min_tokens_lies_between_zero_and_max_tokens() -> None:
    assert SamplingParams(max_tokens=5, min_tokens=5).min_tokens == 5
    assert SamplingParams(max_tokens=5, min_tokens=0).min_tokens == 0
    for value in (6, -1):
        with pytest.raises(InvalidRequestError) as err:
            SamplingParams(max_tokens=5, min_tokens=value)
        assert err.value.field == "min_tokens"
        assert err.value.message == f"must be in [0, max_tokens], got {value}"


def test_seed_is_a_63_bit_unsigned_integer() -> None:
    assert SamplingParams(seed=0).seed == 0
    assert SamplingParams(seed=2**63 - 1).seed == 2**63 - 1
    for value in (-1, 2**63):
        with pytest.raises(InvalidRequestError) as err:
            SamplingParams(seed=value)
        assert (err.value.field, err.value.message) == (
            "seed",
            f"must be in [0, 2**63), got {value}",
        )


def test_logit_bias_values_lie_in_plus_minus_100() -> None:
    assert SamplingParams(logit_bias={1: -100.0, 2: 100.0}).logit_bias == {1: -100.0, 2: 100.0}
    for value in (-100.0001, 100.0001):
        with pytest.raises(InvalidRequestError) as err:
            SamplingParams(logit_bias={1: 0.0, 7: value})
        assert (err.value.field, err.value.message) == (
            "logit_bias",
            "bias for 7 must be in [-100, 100]",
        )


def test_the_first_broken_rule_is_the_one_reported() -> None:
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(max_tokens=0, temperature=-1.0)
    assert err.value.field == "max_tokens"


def test_is_greedy_at_zero_and_below_the_greedy_threshold() -> None:
    assert SamplingParams(temperature=0.0).is_greedy
    # Below GREEDY_TEMPERATURE logits / temperature overflow float32: greedy, as vLLM does.
    assert SamplingParams(temperature=1e-9).is_greedy
    assert not SamplingParams(temperature=1e-4).is_greedy
    assert not SamplingParams().is_greedy


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, False),
        ({"repetition_penalty": 1.1}, True),
        ({"repetition_penalty": 0.9}, True),
        ({"presence_penalty": 0.5}, True),
        ({"presence_penalty": -0.5}, True),
        ({"frequency_penalty": 0.5}, True),
        ({"frequency_penalty": -0.5}, True),
        ({"temperature": 0.5, "top_k": 3, "logit_bias": {1: 2.0}}, False),
    ],
)
def test_has_penalties(kwargs: dict[str, Any], expected: bool) -> None:
    assert SamplingParams(**kwargs).has_penalties is expected


def test_outcomes_of_finish_reasons_and_success() -> None:
    assert [Outcome.of(r) for r in FinishReason] == [
        Outcome.STOP,
        Outcome.LENGTH,
        Outcome.ABORT,
        Outcome.TIMEOUT,
    ]
    assert {o for o in Outcome if o.is_success} == {Outcome.STOP, Outcome.LENGTH, Outcome.ABORT}
    assert Outcome.TIMEOUT in FAILURE_OUTCOMES and Outcome.STOP not in FAILURE_OUTCOMES


def _delta(text: str, ids: tuple[int, ...], finish: FinishReason | None, **kw: Any) -> Any:
    return GenerationDelta("r", text, ids, (), finish, 3, kw.pop("n", len(ids)), **kw)


def test_generation_result_folds_deltas() -> None:
    lp = TokenLogprobs(5, -0.5)
    timings = RequestTimings(0.0, 0.1, 0.2, 0.3, 0.1, 0.1)
    result = GenerationResult()
    result.add(_delta("ab", (1, 2), None, prompt_logprobs=(None, lp)))
    assert result.finish_reason is None and result.timings is None
    result.add(GenerationDelta("r", "c", (3,), (lp,), None, 3, 3))
    result.add(_delta("", (), FinishReason.STOP, n=3, stop_reason="x", timings=timings))
    assert (result.text, result.token_ids, result.logprobs) == ("abc", [1, 2, 3], [lp])
    assert (result.finish_reason, result.stop_reason, result.timings) == ("stop", "x", timings)
    assert result.num_output_tokens == 3
    assert result.prompt_logprobs == [None, lp]


def test_finished_flags() -> None:
    assert not _delta("a", (1,), None).finished
    assert _delta("a", (1,), FinishReason.ABORT).finished
