"""Tokenizer, probe and operations shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from app.api.schemas.common import RequestBody, ResponseModel, TokenId, omitted_if_none


class TokenizeRequest(RequestBody):
    prompt: str
    model: str | None = None


class TokenizeResponse(ResponseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(RequestBody):
    tokens: list[TokenId] = Field(max_length=100_000)
    model: str | None = None


class DetokenizeResponse(ResponseModel):
    prompt: str


class HealthResponse(ResponseModel):
    status: Literal["ok", "ready"]


class EngineView(ResponseModel):
    """Built from the engine's own stats() dict: a key the engine adds is left out of the answer
    (and fails tests/api/test_response_models.py) until it is declared here, rather than
    failing the endpoint."""

    model_config = ConfigDict(extra="ignore")


class LastBatch(EngineView):
    sequences: int
    decode_tokens: int
    prefill_tokens: int


class StepSeconds(EngineView):
    count: int
    p50: float | None
    max: float | None


class EngineStats(EngineView):
    """GET /v1/engine/stats: the scheduler, the KV cache and the worker, live."""

    ready: bool
    draining: bool
    worker_alive: bool
    worker_pid: int | None
    worker_restarts: int
    requests_in_flight: int
    queued_prompt_tokens: int
    num_running: int
    num_waiting: int
    kv_blocks_used: int = Field(description="KV cache blocks held by running sequences")
    kv_blocks_total: int | None = Field(description="null until the first engine step")
    last_batch: LastBatch | None = Field(description="null until the first engine step")
    recent_step_seconds: StepSeconds
    drain_rate_requests_per_second: float
    kv_cache_usage: float | None = omitted_if_none(
        "blocks used / blocks total, 0..1; absent until the first engine step"
    )
    recent_step_ms: list[float] = Field(description="The recent steps' times, oldest first")
