"""The engine's per-token logprobs in each API's shape: OpenAI legacy, OpenAI chat, TGI."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from app.engine.engine_client import EngineClient


class TokenLogprobs(Protocol):
    """The shape of the engine's per-token logprobs (GenerationDelta.logprobs items). Described
    here rather than imported, as the class lives in an engine module the API may not import."""

    @property
    def token_id(self) -> int: ...
    @property
    def logprob(self) -> float: ...
    @property
    def top(self) -> tuple[tuple[int, float], ...]: ...
    @property
    def rank(self) -> int | None: ...


# JSON has no -Infinity; OpenAI reports impossible tokens as -9999.0, and so do we.
FLOOR = -9999.0


def finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else FLOOR


def prompt_entry(
    prompt_logprobs: Sequence[TokenLogprobs | None], position: int
) -> TokenLogprobs | None:
    """The engine's logprobs for the prompt token at position: None for the first (nothing
    predicts it) and for every position when the prompt was not scored."""
    return prompt_logprobs[position] if position < len(prompt_logprobs) else None


def completion_logprobs(
    engine: EngineClient,
    logprobs: Sequence[TokenLogprobs],
    *,
    text_offset: int,
    echo_ids: Sequence[int] = (),
    echo_logprobs: Sequence[TokenLogprobs | None] = (),
    echo_top_n: int | None = None,
) -> tuple[dict[str, Any], int]:
    """OpenAI's legacy object {tokens, token_logprobs, top_logprobs, text_offset}.

    Echoed prompt tokens come first, with their logprobs from echo_logprobs (the engine's
    prompt logprobs) and null for the first one, which nothing predicts. text_offset is where
    each token starts in the choice's text; the returned int is the offset after the last
    token, for the next streamed piece.
    """
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for i, token_id in enumerate(echo_ids):
        text = engine.token_text(token_id)
        scored = prompt_entry(echo_logprobs, i)
        tokens.append(text)
        token_logprobs.append(None if scored is None else finite(scored.logprob))
        top_logprobs.append(
            None
            if scored is None
            else {engine.token_text(t): finite(lp) for t, lp in scored.top[:echo_top_n]}
        )
        offsets.append(text_offset)
        text_offset += len(text)
    for entry in logprobs:
        text = engine.token_text(entry.token_id)
        tokens.append(text)
        token_logprobs.append(finite(entry.logprob))
        top_logprobs.append({engine.token_text(i): finite(lp) for i, lp in entry.top})
        offsets.append(text_offset)
        text_offset += len(text)
    body = {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": offsets,
    }
    return body, text_offset


def vllm_prompt_logprobs(
    engine: EngineClient,
    prompt_ids: Sequence[int],
    scored: Sequence[TokenLogprobs | None],
    top_n: int,
) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's prompt_logprobs: per prompt token, null for the first; else {token id: {logprob,
    rank, decoded_token}} for the prompt's own token, then the top_n most likely there."""
    out: list[dict[str, dict[str, Any]] | None] = []
    for i in range(len(prompt_ids)):
        entry = prompt_entry(scored, i)
        if entry is None:
            out.append(None)
            continue
        ranked = {
            str(entry.token_id): _vllm_logprob(engine, entry.token_id, entry.logprob, entry.rank)
        }
        for place, (token_id, logprob) in enumerate(entry.top[:top_n], start=1):
            ranked.setdefault(str(token_id), _vllm_logprob(engine, token_id, logprob, place))
        out.append(ranked)
    return out


def _vllm_logprob(
    engine: EngineClient, token_id: int, logprob: float, rank: int | None
) -> dict[str, Any]:
    return {"logprob": finite(logprob), "rank": rank, "decoded_token": engine.token_text(token_id)}


def chat_logprobs(
    engine: EngineClient, logprobs: Sequence[TokenLogprobs], top_n: int
) -> list[dict[str, Any]]:
    """OpenAI chat's logprobs.content entries."""
    return [
        {
            **_chat_entry(engine, entry.token_id, entry.logprob),
            "top_logprobs": [_chat_entry(engine, i, lp) for i, lp in entry.top[:top_n]],
        }
        for entry in logprobs
    ]


def _chat_entry(engine: EngineClient, token_id: int, logprob: float) -> dict[str, Any]:
    text = engine.token_text(token_id)
    return {"token": text, "logprob": finite(logprob), "bytes": list(text.encode("utf-8"))}


def tgi_token(
    engine: EngineClient,
    token_id: int,
    logprob: TokenLogprobs | None,
    *,
    text: str | None = None,
) -> dict[str, Any]:
    """TGI's {id, text, logprob, special}. `text` overrides the token's own text (streams send
    the detokenized piece, so that the pieces add up to the generated text)."""
    return {
        "id": token_id,
        "text": engine.token_text(token_id) if text is None else text,
        "logprob": None if logprob is None else finite(logprob.logprob),
        "special": token_id == engine.info.eos_token_id,
    }


def tgi_prefill_token(
    engine: EngineClient,
    token_id: int,
    prompt_logprobs: Sequence[TokenLogprobs | None],
    position: int,
) -> dict[str, Any]:
    """TGI's prefill entry {id, text, logprob}: null for the first token, which nothing
    predicts (and for every token if the engine scored none)."""
    scored = prompt_entry(prompt_logprobs, position)
    return {
        "id": token_id,
        "text": engine.token_text(token_id),
        "logprob": None if scored is None else finite(scored.logprob),
    }


def tgi_top_tokens(engine: EngineClient, logprob: TokenLogprobs | None) -> list[dict[str, Any]]:
    if logprob is None:
        return []
    return [
        {
            "id": i,
            "text": engine.token_text(i),
            "logprob": finite(lp),
            "special": i == engine.info.eos_token_id,
        }
        for i, lp in logprob.top
    ]
