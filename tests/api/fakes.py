"""A deterministic stand-in for the engine's worker, so the HTTP layer is tested without a model.

FakeEngineClient implements the EngineClient protocol (app/engine/protocol.py) the way
AsyncEngine does: requests are validated by the real validate_request, counted in or refused
(429 with Retry-After) by the real AdmissionControl, and the worker's output goes through the
real OutputProcessor (incremental detokenization, stop strings, deadlines, timings, one
RequestRecord per request). Only the worker is scripted, and it keeps its own state, as the
real one does: the requests it is running (`worker_running`), the abort commands it received
(`worker_aborts`) and the tokens it generated (`worker_tokens`). Tests of aborts read those, not
the records the client side writes.

Tokenizer: one token per UTF-8 byte (ids 0..255) plus <|endoftext|> = 256. A multi-byte
character therefore spans several tokens, which exercises the "hold back half a character" path.

Worker: the continuation is a fixed script (`FakeEngineClient.script`), prefixed with "<seed>"
when the request has a seed, one token per step, then <|endoftext|> (finish "stop") unless
max_tokens runs out first (finish "length"); stop token ids end it too. With `hold_after` it
stalls after that many tokens, so a test can act (disconnect, overflow the queue) while a request
is certainly still running, on any machine.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.engine.client.admission import AdmissionControl
from app.engine.client.output_processor import OutputProcessor
from app.engine.client.request_entry import RequestEntry
from app.engine.client.request_state import RequestState
from app.engine.client.validation import ModelLimits, check_text_fits, validate_request
from app.engine.errors import EngineDeadError, EngineNotReadyError
from app.engine.protocol import (
    ENGINE_FINISHED,
    FINISH_CODES,
    AddRequest,
    DeltaSink,
    FinishReason,
    ModelInfo,
    Outcome,
    RequestRecord,
    SamplingParams,
    StepResult,
    TokenLogprobs,
)

EOS = 256
VOCAB = 257
TOKEN_BYTES = [bytes([i]) for i in range(256)] + [b"<|endoftext|>"]


@dataclass(frozen=True)
class Call:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    arrival: float | None = None  # what the route passed as the request's arrival


@dataclass
class FakeEngineClient(RequestEntry):
    script: str = " the quick brown fox"
    max_model_len: int = 128
    token_delay: float = 0.0  # seconds before each step
    hold_after: int | None = None  # the worker stalls after this many tokens (until aborted)
    ready: bool = True
    draining: bool = False
    overloaded: bool = False  # refuse every request, as the real admission does when full
    max_queued_requests: int = 256  # AdmissionControl's limits, as AsyncEngine's defaults
    max_queued_tokens: int = 262144
    die_after: int | None = None  # the worker "dies" after this many tokens of a request
    calls: list[Call] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)  # ended without a finish reason
    finished: list[str] = field(default_factory=list)  # ended with one
    worker_aborts: list[str] = field(default_factory=list)  # AbortRequests the worker got
    worker_tokens: dict[str, int] = field(default_factory=dict)  # tokens it generated
    records: list[RequestRecord] = field(default_factory=list)
    sink: Callable[[RequestRecord], None] | None = None  # e.g. Telemetry.on_record
    started: bool = False
    shutdown_grace: float | None = None
    worker_restarts: int = 0
    cached_tokens: int = 0  # prompt tokens the worker reports taking from its prefix cache

    def __post_init__(self) -> None:
        self.info = ModelInfo(
            model_id="fake-gpt2",
            model_path="/models/fake-gpt2",
            vocab_size=VOCAB,
            max_model_len=self.max_model_len,
            eos_token_id=EOS,
            dtype="float32",
            device="cpu",
            max_num_seqs=4,
            kv_blocks=64,
            kv_block_size=16,
        )
        self.admission = AdmissionControl(
            self.info.max_num_seqs, self.max_queued_requests, self.max_queued_tokens
        )
        self.outputs = OutputProcessor(
            TOKEN_BYTES,
            frozenset({EOS}),
            self.admission,
            abort=self._abort,
            record_sink=self._record,
        )
        self._workers: dict[str, asyncio.Task[None]] = {}

    @property
    def worker_running(self) -> set[str]:
        """Requests the scripted worker is still generating."""
        return {rid for rid, task in self._workers.items() if not task.done()}

    # ---- state and lifecycle --------------------------------------------------------------
    @property
    def is_ready(self) -> bool:
        return self.ready and not self.draining

    @property
    def is_draining(self) -> bool:
        return self.draining

    @property
    def is_worker_alive(self) -> bool:
        return True

    @property
    def num_in_flight(self) -> int:
        return len(self.outputs.requests)

    async def start(self) -> None:
        self.started = True

    def begin_drain(self, grace_seconds: float) -> None:
        self.draining = True

    async def wait_drained(self) -> None:
        await self.outputs.idle.wait()

    async def shutdown(self, grace_seconds: float) -> None:
        self.shutdown_grace = grace_seconds

    # ---- tokenizer ----------------------------------------------------------------------
    async def encode(self, text: str, *, max_tokens: int | None = None) -> list[int]:
        if max_tokens is not None:
            check_text_fits(text, 1, max_tokens)  # one token per byte
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        skip = {EOS} if skip_special_tokens else set()
        return b"".join(TOKEN_BYTES[t] for t in token_ids if t not in skip).decode(
            "utf-8", errors="replace"
        )

    def token_text(self, token_id: int) -> str:
        if token_id == EOS:
            return "<|endoftext|>"
        if token_id < 128:
            return chr(token_id)
        return f"bytes:\\x{token_id:02x}"

    def stats(self) -> dict[str, object]:
        return {"running": 0, "waiting": 0, "calls": len(self.calls)}

    # ---- generation (generate and add_request: RequestEntry, over this _add) --------------
    def _add(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        sink: DeltaSink | None,
        arrival: float | None = None,
    ) -> RequestState:
        """As AsyncEngine._add: validate, admit, register; then the scripted worker starts."""
        self.calls.append(Call(list(prompt_ids), params, request_id, arrival))
        if self.draining or not self.ready:
            raise EngineNotReadyError("the engine is not ready")
        handle = len(self.calls)
        limits = ModelLimits(VOCAB, self.max_model_len)
        request = validate_request(request_id, prompt_ids, params, limits, handle)
        if self.overloaded:  # as if the running batch and the queue were full
            self.admission.check(self.admission.max_in_flight, 0, len(prompt_ids))
        self.admission.admit(len(prompt_ids))
        try:
            req = self.outputs.add(request_id, handle, len(prompt_ids), params, sink, arrival)
        except BaseException:
            self.admission.release(len(prompt_ids), was_scheduled=False)
            raise
        self._workers[request_id] = asyncio.create_task(self._work(request))
        return req

    def output_ids(self, params: SamplingParams) -> list[int]:
        text = (f"<{params.seed}>" if params.seed is not None else "") + self.script
        return list(text.encode("utf-8"))

    async def _work(self, request: AddRequest) -> None:
        """The scripted worker: one token per step, reported as the real worker reports it."""
        params, rid = request.params, request.request_id
        script = self.output_ids(params)
        scheduled = time.monotonic()
        cached = min(self.cached_tokens, len(request.prompt_ids) - 1)  # the last is computed
        for step in range(params.max_tokens):
            if self.hold_after is not None and step >= self.hold_after:
                await asyncio.Future()  # stalled: only an abort (a cancel) ends it
            await asyncio.sleep(self.token_delay)
            if self.die_after is not None and step >= self.die_after:
                self.outputs.fail(
                    rid, EngineDeadError("the engine worker died"), Outcome.WORKER_LOST
                )
                return
            at_end = step >= len(script)
            token = EOS if at_end and not params.ignore_eos else script[step % len(script)]
            finish = None
            if token == EOS or token in params.stop_token_ids:
                finish = FinishReason.STOP
            elif step + 1 >= params.max_tokens:
                finish = FinishReason.LENGTH
            self.worker_tokens[rid] = step + 1
            lp = self._logprobs(token, request.params)
            prompt_lp = self._prompt_logprobs(request) if step == 0 else None
            out = StepResult(  # one row: this request's token, as the worker sends it
                array("q", [request.handle]),
                array("q", [token]),
                bytes([FINISH_CODES.index(finish)]),
                scheduled=((0, scheduled),) if step == 0 else (),
                cached_tokens=((0, cached),) if step == 0 and cached else (),
                logprobs=((0, lp),) if lp is not None else (),
                prompt_logprobs=((0, prompt_lp),) if prompt_lp is not None else (),
            )
            self.outputs.process(out)
            if finish is not None:
                return

    def _abort(self, request_id: str) -> None:
        """The AbortRequest reaching the worker: it stops generating the request."""
        self.worker_aborts.append(request_id)
        task = self._workers.get(request_id)
        if task is not None:
            task.cancel()

    def _record(self, record: RequestRecord) -> None:
        self.records.append(record)
        (self.finished if record.outcome in ENGINE_FINISHED else self.aborted).append(
            record.request_id
        )
        if self.sink is not None:
            self.sink(record)

    @staticmethod
    def _logprobs(token: int, params: SamplingParams) -> TokenLogprobs | None:
        if params.logprobs is None:
            return None
        top = tuple(((token + k) % VOCAB, -0.5 - k) for k in range(params.logprobs))
        return TokenLogprobs(token_id=token, logprob=-0.5, top=top)

    @staticmethod
    def _prompt_logprobs(request: AddRequest) -> tuple[TokenLogprobs | None, ...] | None:
        """As the engine: with the first token, each prompt token at -0.25 and rank 1 (none for
        the first), its top k the token itself and the k-1 ids after it."""
        k = request.params.prompt_logprobs
        if k is None:
            return None
        scored = (
            TokenLogprobs(t, -0.25, tuple(((t + j) % VOCAB, -0.25 - j) for j in range(k)), 1)
            for t in request.prompt_ids[1:]
        )
        return (None, *scored)
