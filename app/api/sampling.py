"""Request fields -> the engine's SamplingParams, whose construction checks every range; token ids
are checked against the vocabulary by the engine client (app/engine/client/validation.py)."""

from __future__ import annotations

from app.api.errors import APIError
from app.api.schemas.common import SEED_LIMIT
from app.api.schemas.openai import SamplingFields
from app.api.schemas.tgi import GenerateParameters
from app.engine.protocol import SamplingParams


def parse_logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    """OpenAI sends token ids as JSON object keys, i.e. strings."""
    if not bias:
        return {}
    parsed: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token_id = int(key)
        except ValueError:
            raise APIError(
                422, f"logit_bias: key {key!r} is not a token id", param="logit_bias"
            ) from None
        parsed[token_id] = float(value)
    return parsed


def choice_seed(seed: int | None, choice: int) -> int | None:
    """Choice i of a seeded request uses seed + i, so the n choices differ but replay exactly."""
    return None if seed is None else (seed + choice) % SEED_LIMIT


def openai_params(
    body: SamplingFields,
    *,
    max_tokens: int,
    logprobs: int | None,
    choice: int,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        min_tokens=body.min_tokens,
        temperature=_or(body.temperature, 1.0),
        top_k=max(0, body.top_k or 0),  # OpenAI-side -1 and 0 both mean off
        top_p=_or(body.top_p, 1.0),
        min_p=_or(body.min_p, 0.0),
        repetition_penalty=_or(body.repetition_penalty, 1.0),
        presence_penalty=_or(body.presence_penalty, 0.0),
        frequency_penalty=_or(body.frequency_penalty, 0.0),
        seed=choice_seed(body.seed, choice),
        stop_token_ids=tuple(body.stop_token_ids or ()),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        logit_bias=parse_logit_bias(body.logit_bias),
        stop=tuple(body.stop_strings),
        include_stop_str_in_output=body.include_stop_str_in_output,
        timeout=body.timeout,
    )


def tgi_params(
    p: GenerateParameters,
    *,
    max_tokens: int,
    logprobs: int | None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    stop = tuple(p.stop or ())  # TGI keeps a stop sequence in the generated text
    if not p.sampling:  # TGI: greedy unless sampling was asked for
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0,
            repetition_penalty=_or(p.repetition_penalty, 1.0),
            frequency_penalty=_or(p.frequency_penalty, 0.0),
            seed=p.seed,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            stop=stop,
            include_stop_str_in_output=True,
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_or(p.temperature, 1.0),
        top_k=p.top_k or 0,
        top_p=_or(p.top_p, 1.0),
        repetition_penalty=_or(p.repetition_penalty, 1.0),
        frequency_penalty=_or(p.frequency_penalty, 0.0),
        seed=p.seed,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        stop=stop,
        include_stop_str_in_output=True,
    )


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)
