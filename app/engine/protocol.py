"""The one contract between the HTTP process and the engine.

Everything that crosses the process boundary is declared here, and nothing else does:

- what a request asks for (`SamplingParams`, stop strings and deadline included) and how it is
  sent (`AddRequest`, `AbortRequest`, `Shutdown`);
- what the worker reports back (`StepResult`: every row's new token as arrays, and `StepStats`;
  `WorkerReady`, `WorkerFailed`);
- what the API process hands the routes (`GenerationDelta`) and the observers (`RequestRecord`);
- the words for how things end (`FinishReason`, `Outcome`) that metrics, logs, tracing and error
  mapping all use.

`EngineClient`, the typed interface the HTTP layer depends on, is beside it (engine_client.py).

Token ids and small dataclasses only: each message is pickled into one frame
(app/engine/wire.py) on a Unix socket between the worker and each API process. Stdlib only, so
both processes import it.

A request is validated once, in the API process: `SamplingParams.__post_init__` checks each
parameter's range, and the engine client's `validate_request` checks the prompt against the
model's limits. The worker trusts what arrives (unpickling does not run `__post_init__`) and
keeps only the assertions that guard its own memory.
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.engine.errors import InvalidRequestError

MAX_LOGPROBS = 20
# Below this temperature sampling is greedy (vLLM's _SAMPLING_EPS): dividing float32 logits by a
# smaller one overflows to inf, and softmax of inf is NaN, not "the most likely token".
GREEDY_TEMPERATURE = 1e-5


class FinishReason(enum.StrEnum):
    """Why a generation ended, as callers see it (OpenAI's and TGI's finish_reason)."""

    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the context window
    ABORT = "abort"  # cancelled
    TIMEOUT = "timeout"  # the request's deadline ran out (set by the engine client)


class Outcome(enum.StrEnum):
    """How one request ended, for metrics, the request log, tracing and error mapping.

    A finish reason, or one of the failures. Each request has exactly one outcome."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    TIMEOUT = "timeout"  # finished, but the caller did not get what it asked for: a failure
    VALIDATION = "validation"  # bad input (422, 413)
    OVERLOADED = "overloaded"  # 429
    UNAVAILABLE = "unavailable"  # 503 while starting, restarting or draining
    DISCONNECTED = "disconnected"  # the caller left before the answer ended
    WORKER_LOST = "worker_lost"  # the worker died under it
    SHUTDOWN = "shutdown"  # still running when the drain time ran out
    INTERNAL = "internal"  # a 500: a bug of ours

    @property
    def is_success(self) -> bool:
        return self in SUCCESS_OUTCOMES

    @classmethod
    def of(cls, reason: FinishReason) -> Outcome:
        return cls(reason.value)


SUCCESS_OUTCOMES = frozenset({Outcome.STOP, Outcome.LENGTH, Outcome.ABORT})
FAILURE_OUTCOMES = tuple(o for o in Outcome if o not in SUCCESS_OUTCOMES)
# Outcomes the engine client reports; the other failures are seen only by the HTTP layer.
ENGINE_FAILURES = frozenset(
    {
        Outcome.VALIDATION,
        Outcome.TIMEOUT,
        Outcome.WORKER_LOST,
        Outcome.SHUTDOWN,
        Outcome.DISCONNECTED,
    }
)
# Outcomes after which the engine had finished the request (end-to-end latency is meaningful).
ENGINE_FINISHED = frozenset({*SUCCESS_OUTCOMES, Outcome.TIMEOUT})


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-probability of a chosen token and of the top alternatives at its position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    rank: int | None = None  # of token_id in the vocabulary by logprob, 1 = most likely


@dataclass(frozen=True)
class SamplingParams:
    """What one generation asks for. Constructing it checks every range (naming the field)."""

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0  # 0 (anything below GREEDY_TEMPERATURE) means greedy
    top_k: int = 0  # 0 means off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF semantics, over prompt and output tokens
    presence_penalty: float = 0.0  # OpenAI semantics, over output tokens
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; k: the chosen token and the top k
    # None: none; k: each prompt token's logprob (the first has none) and the top k at its
    # position, from the raw logits (what OpenAI's echo + logprobs and TGI's
    # decoder_input_details report; vLLM's prompt_logprobs).
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    # Applied by the engine client as it detokenizes (the worker ignores them): text that ends
    # the generation, kept in the output or not, and whether special tokens show as text.
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # Seconds from acceptance; the engine client aborts the request when they run out and
    # ends it with finish_reason "timeout". None: no deadline.
    timeout: float | None = None

    def __post_init__(self) -> None:
        limits: list[tuple[str, bool, str]] = [
            ("max_tokens", self.max_tokens >= 1, "must be >= 1"),
            ("min_tokens", 0 <= self.min_tokens <= self.max_tokens, "must be in [0, max_tokens]"),
            ("temperature", 0.0 <= self.temperature <= 100.0, "must be in [0, 100]"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 disables)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "must be in [0, 1]"),
            ("repetition_penalty", 0.0 < self.repetition_penalty <= 10.0, "must be in (0, 10]"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "must be in [-2, 2]"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "must be in [-2, 2]"),
            (
                "logprobs",
                self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
                f"must be in [0, {MAX_LOGPROBS}]",
            ),
            (
                "prompt_logprobs",
                self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= MAX_LOGPROBS,
                f"must be in [0, {MAX_LOGPROBS}]",
            ),
            ("timeout", self.timeout is None or self.timeout > 0, "must be > 0 seconds"),
        ]
        for name, ok, rule in limits:
            if not ok:
                raise InvalidRequestError(name, f"{rule}, got {getattr(self, name)!r}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidRequestError("seed", f"must be in [0, 2**63), got {self.seed}")
        for token_id, bias in self.logit_bias.items():
            if not -100.0 <= bias <= 100.0:
                raise InvalidRequestError(
                    "logit_bias", f"bias for {token_id} must be in [-100, 100]"
                )

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


# ---- API process -> worker ------------------------------------------------------------------


@dataclass(frozen=True)
class AddRequest:
    """A validated request (see validate_request): the worker schedules it as it is."""

    request_id: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    # Small integer the sender picks, unique among its live requests: the worker's outputs name
    # requests by it (an array entry, not a string per row per step).
    handle: int = 0


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class Shutdown:
    pass


# ---- worker -> API process ------------------------------------------------------------------


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
    kv_blocks: int  # KV cache blocks in the worker's pool
    quantization: str = "none"
    kv_block_size: int = 16  # tokens per block


@dataclass(frozen=True)
class WorkerReady:
    """The worker has loaded and warmed up the model: the first message on every channel."""

    info: ModelInfo
    pid: int = 0  # the worker process (the API processes of --api-workers did not start it)


@dataclass(frozen=True)
class WorkerFailed:
    error: str


@dataclass(slots=True)
class StepStats:
    """Per-step figures for metrics and the stats endpoint."""

    step_seconds: float
    num_decode_tokens: int
    num_prefill_tokens: int
    batch_size: int  # sequences that ran in the step
    num_running: int
    num_waiting: int
    kv_blocks_used: int  # blocks held by sequences (cached free blocks do not count)
    kv_blocks_total: int
    # In this step: prompt tokens looked up in the prefix cache at admission, and those found
    # cached (vLLM's prefix_cache_queries / hits), and sequences preempted for blocks.
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    # CPU seconds of the worker's step loop outside the model forward and sampling since the
    # last reported step: commands, scheduling, outputs, encoding (the host cost per token).
    host_seconds: float = 0.0


# Finish reasons as one byte per row in StepResult.finish (0: still running).
FINISH_CODES: tuple[FinishReason | None, ...] = (None, *FinishReason)


@dataclass(slots=True)
class StepResult:
    """The worker's one message per step: one row per request that moved, as arrays, so a step
    of 256 rows is a few compact buffers rather than 256 objects. The rare extras are sparse,
    keyed by row index.

    A row either carries a new token, or (token -1) ends a request that was aborted.

    Not frozen (nor StepStats): made and read once a step on each side, and a frozen
    dataclass's __init__ sets each field through object.__setattr__."""

    handles: array[int]  # "q": AddRequest.handle of each row
    tokens: array[int]  # "q": the row's new token id, -1 for none
    finish: bytes  # FINISH_CODES index per row
    # (row, time.monotonic() in the worker when it was first scheduled), on a request's first row
    scheduled: tuple[tuple[int, float], ...] = ()
    # (row, prompt tokens taken from the prefix cache), on a request's first row when nonzero
    cached_tokens: tuple[tuple[int, int], ...] = ()
    logprobs: tuple[tuple[int, TokenLogprobs], ...] = ()  # rows whose params ask for them
    # (row, one entry per prompt token), with the first token when params.prompt_logprobs
    prompt_logprobs: tuple[tuple[int, tuple[TokenLogprobs | None, ...]], ...] = ()
    stats: StepStats | None = None  # None when nothing ran

    def __len__(self) -> int:
        return len(self.handles)


# ---- engine client -> routes and observers --------------------------------------------------


@dataclass(frozen=True)
class RequestTimings:
    """Seconds, measured in the API process from the moment the HTTP request arrived (its
    headers seen by the middleware: its body, validation and tokenization count)."""

    queue: float  # accepted -> first scheduled (approximated by first token when unknown)
    time_to_first_token: float
    decode: float  # first token -> last token
    total: float
    mean_inter_token: float
    max_inter_token: float


@dataclass(slots=True)
class GenerationDelta:
    """One piece of a streamed generation: new text and tokens; the last one has finish_reason.

    Made once per streamed token and never changed after, but not frozen: a frozen dataclass's
    __init__ sets each field through object.__setattr__, 5.6 against 1.1 µs here for these
    eleven fields, about 6% of the HTTP process's CPU per token."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...]
    finish_reason: FinishReason | None
    num_prompt_tokens: int
    num_output_tokens: int
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    timings: RequestTimings | None = None  # on the last delta only
    # With params.prompt_logprobs, on the delta of the first generated token.
    prompt_logprobs: tuple[TokenLogprobs | None, ...] | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache (OpenAI usage)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


# Where EngineClient.add_request delivers a request's deltas, or the error that ends it.
DeltaSink = Callable[[GenerationDelta | BaseException], None]


@dataclass
class GenerationResult:
    """Everything one generation produced, folded from its deltas (non-streamed answers, and
    the in-process LLM's results)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    num_output_tokens: int = 0
    timings: RequestTimings | None = None
    prompt_logprobs: Sequence[TokenLogprobs | None] | None = None  # when the params ask
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache

    def add(self, delta: GenerationDelta) -> None:
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = list(delta.prompt_logprobs)
        self.num_cached_tokens = delta.num_cached_tokens
        self.text += delta.text
        self.token_ids.extend(delta.token_ids)
        self.logprobs.extend(delta.logprobs)
        self.num_output_tokens = delta.num_output_tokens
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            self.stop_reason = delta.stop_reason
            self.timings = delta.timings


@dataclass(frozen=True)
class RequestRecord:
    """How one request ended, for metrics and the request log. Reported once per request."""

    request_id: str
    outcome: Outcome
    num_prompt_tokens: int
    num_output_tokens: int
    timings: RequestTimings
    prefill_seconds: float | None  # first scheduled -> first token; None if never scheduled
    inter_token_gaps: tuple[float, ...]
