"""validate_request and resolve_max_tokens: the one check of a request against the model's
limits, at its exact boundaries (pure Python, fast; part of `make mutation`)."""

from __future__ import annotations

import pytest

from app.engine.client.validation import (
    ModelLimits,
    check_token_ids,
    resolve_max_tokens,
    validate_request,
)
from app.engine.errors import InvalidRequestError
from app.engine.protocol import AddRequest, SamplingParams

LIMITS = ModelLimits(vocab_size=100, max_model_len=32)


def test_a_request_exactly_filling_the_context_is_accepted() -> None:
    params = SamplingParams(max_tokens=22)
    request = validate_request("r", [1] * 10, params, LIMITS)
    assert request == AddRequest("r", (1,) * 10, params)


def test_one_token_past_the_context_is_refused_naming_both_numbers() -> None:
    with pytest.raises(InvalidRequestError) as err:
        validate_request("r", [1] * 10, SamplingParams(max_tokens=23), LIMITS)
    assert err.value.field == "max_tokens"
    assert err.value.message == (
        "prompt (10 tokens) + max_tokens (23) = 33 exceeds the context window of 32 tokens; "
        "shorten the prompt or lower max_tokens"
    )


@pytest.mark.parametrize("prompt_len", [1, 5, 31])
def test_an_unset_max_tokens_fills_the_rest_of_the_context_and_is_accepted(
    prompt_len: int,
) -> None:
    max_tokens = resolve_max_tokens(None, prompt_len, LIMITS.max_model_len)
    assert prompt_len + max_tokens == LIMITS.max_model_len
    validate_request("r", [1] * prompt_len, SamplingParams(max_tokens=max_tokens), LIMITS)


def test_resolve_max_tokens_keeps_what_was_asked_and_caps_the_rest() -> None:
    assert resolve_max_tokens(7, 30, 32) == 7  # asked: kept, even past the window
    assert resolve_max_tokens(None, 10, 32, cap=5) == 5  # TGI's default cap
    assert resolve_max_tokens(None, 10, 32, cap=50) == 22  # the cap never passes the window
    assert resolve_max_tokens(None, 32, 32) == 1  # a full prompt: validate_request refuses
    assert resolve_max_tokens(None, 40, 32, cap=5) == 1


def test_a_full_prompt_with_an_unset_max_tokens_is_refused() -> None:
    max_tokens = resolve_max_tokens(None, 32, LIMITS.max_model_len)
    with pytest.raises(InvalidRequestError) as err:
        validate_request("r", [1] * 32, SamplingParams(max_tokens=max_tokens), LIMITS)
    assert err.value.field == "max_tokens"


def test_an_empty_prompt_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as err:
        validate_request("r", [], SamplingParams(max_tokens=1), LIMITS)
    assert (err.value.field, err.value.message) == ("prompt", "must contain at least one token")


@pytest.mark.parametrize(
    ("prompt", "params", "field"),
    [
        ([100], SamplingParams(), "prompt"),
        ([-1], SamplingParams(), "prompt"),
        ([1], SamplingParams(stop_token_ids=(100,)), "stop_token_ids"),
        ([1], SamplingParams(stop_token_ids=(-1,)), "stop_token_ids"),
        ([1], SamplingParams(logit_bias={100: 1.0}), "logit_bias"),
        ([1], SamplingParams(logit_bias={-1: 1.0}), "logit_bias"),
    ],
)
def test_token_ids_outside_the_vocabulary_name_their_field(
    prompt: list[int], params: SamplingParams, field: str
) -> None:
    with pytest.raises(InvalidRequestError) as err:
        validate_request("r", prompt, params, LIMITS)
    assert err.value.field == field
    assert err.value.message.endswith("is outside the vocabulary [0, 100)")


def test_the_first_and_last_vocabulary_ids_are_accepted() -> None:
    params = SamplingParams(max_tokens=1, stop_token_ids=(0, 99), logit_bias={0: 1.0, 99: -1.0})
    assert validate_request("r", [0, 99], params, LIMITS).prompt_ids == (0, 99)


def test_check_token_ids_names_the_offending_id() -> None:
    check_token_ids("x", [], 10)
    check_token_ids("x", [0, 9], 10)
    with pytest.raises(InvalidRequestError) as err:
        check_token_ids("x", [3, 10, 11], 10)
    assert (err.value.field, err.value.message) == (
        "x",
        "token id 10 is outside the vocabulary [0, 10)",
    )
