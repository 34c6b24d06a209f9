"""Small frozen messages the engine hands its callers (and, later, sends across processes)."""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.core.sequence import TokenLogprobs
from app.engine.params import SamplingParams


@dataclass(frozen=True)
class RequestOutput:
    """What one step produced for one request: new tokens, and the finish reason on the last."""

    request_id: str
    new_token_ids: tuple[int, ...]
    new_logprobs: tuple[TokenLogprobs, ...]
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    first_scheduled_time: float | None = None  # time.monotonic() in the worker
    # With params.prompt_logprobs, on the output that carries the first generated token.
    prompt_logprobs: tuple[TokenLogprobs | None, ...] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class StepStats:
    """Per-step figures for metrics and the stats endpoint."""

    step_seconds: float
    num_decode_tokens: int
    num_prefill_tokens: int
    batch_size: int  # sequences that ran in the step
    num_running: int
    num_waiting: int
    kv_slots_used: int
    kv_slots_total: int
    num_shared_prefix_tokens: int = 0  # prompt tokens copied from another sequence's cache


@dataclass(frozen=True)
class StepResult:
    outputs: tuple[RequestOutput, ...]
    stats: StepStats | None  # None when nothing ran


@dataclass(frozen=True)
class ModelInfo:
    """What the worker reports once loaded; the API layer shows it in /info and /v1/models."""

    model_id: str  # the name callers use in "model" fields
    model_path: str
    vocab_size: int
    max_model_len: int
    eos_token_id: int
    dtype: str
    device: str
    max_num_seqs: int
    kv_slots: int
    quantization: str = "none"


@dataclass(frozen=True)
class RequestTimings:
    """Seconds, measured in the API process from the moment the request was accepted."""

    queue: float  # accepted -> first scheduled (approximated by first token when unknown)
    time_to_first_token: float
    decode: float  # first token -> last token
    total: float
    mean_inter_token: float
    max_inter_token: float


@dataclass(frozen=True)
class RequestRecord:
    """How one request ended, for metrics and the request log. Reported once per request."""

    request_id: str
    # A finish reason (stop, length, abort, timeout) or a failure: disconnected (the caller
    # left), validation (the worker refused it), worker_lost, shutdown.
    outcome: str
    num_prompt_tokens: int
    num_output_tokens: int
    timings: RequestTimings
    prefill_seconds: float | None  # first scheduled -> first token; None if never scheduled
    inter_token_gaps: tuple[float, ...]


@dataclass(frozen=True)
class GenerationDelta:
    """One piece of a streamed generation: new text and tokens; the last one has finish_reason."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...]
    finish_reason: str | None  # stop | length | abort | timeout
    num_prompt_tokens: int
    num_output_tokens: int
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    timings: RequestTimings | None = None  # on the last delta only
    # With params.prompt_logprobs, on the delta of the first generated token.
    prompt_logprobs: tuple[TokenLogprobs | None, ...] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


# Messages between the EngineClient (API process) and the worker process. Token ids and small
# dataclasses only: they are pickled through multiprocessing queues.


@dataclass(frozen=True)
class AddRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class WorkerReady:
    info: ModelInfo


@dataclass(frozen=True)
class WorkerFailed:
    error: str


@dataclass(frozen=True)
class RequestRejected:
    request_id: str
    field: str
    message: str
