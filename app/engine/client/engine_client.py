"""EngineClient: the asyncio side of the engine, living in the API process (no torch here).

It starts the worker process, tokenizes and detokenizes, bounds the waiting queue, turns the
worker's per-step token ids into per-request text deltas with stop strings applied, enforces
per-request deadlines, and, if the worker dies, ends every in-flight request with an error and
starts a new worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from app.engine.client.admission import AdmissionControl
from app.engine.client.detokenizer import IncrementalDetokenizer
from app.engine.client.request_state import RequestState
from app.engine.client.tokenizer import GPT2Tokenizer, load_tokenizer
from app.engine.client.validation import ModelLimits, validate_request
from app.engine.client.worker_handle import WorkerProcess
from app.engine.config import EngineConfig
from app.engine.errors import (
    EngineDeadError,
    EngineNotReadyError,
    InvalidRequestError,
)
from app.engine.params import SamplingParams
from app.engine.protocol import (
    AbortRequest,
    AddRequest,
    GenerationDelta,
    ModelInfo,
    RequestOutput,
    RequestRecord,
    RequestRejected,
    StepResult,
    StepStats,
    WorkerReady,
)
from app.hub import resolve_model_dir

log = logging.getLogger(__name__)
RESTART_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0)


class EngineClient:
    info: ModelInfo

    def __init__(
        self,
        config: EngineConfig,
        *,
        model_id: str | None = None,
        max_queued_requests: int = 256,
        max_queued_tokens: int = 262144,
        stats_sink: Callable[[StepStats], None] | None = None,
        request_sink: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.config = config
        self.model_id = model_id or config.model
        self.tokenizer: GPT2Tokenizer = load_tokenizer(resolve_model_dir(config.model))
        self.admission = AdmissionControl(
            config.max_num_seqs, max_queued_requests, max_queued_tokens
        )
        self._stats_sink = stats_sink
        self._request_sink = request_sink
        self._requests: dict[str, RequestState] = {}
        self._queued_tokens = 0
        self._worker: WorkerProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._draining = False
        self._closing = False
        self._limits: ModelLimits | None = None
        self._start_error: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.worker_restarts = 0
        self.last_stats: StepStats | None = None
        self.recent_step_seconds: deque[float] = deque(maxlen=50)

    # lifecycle

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set() and not self._draining

    @property
    def is_draining(self) -> bool:
        return self._draining

    @property
    def num_in_flight(self) -> int:
        return len(self._requests)

    @property
    def queued_prompt_tokens(self) -> int:
        return self._queued_tokens

    @property
    def worker_pid(self) -> int | None:
        return self._worker.pid if self._worker else None

    @property
    def is_worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        while not self._ready.is_set():
            if self._start_error is not None:
                raise RuntimeError(f"engine worker failed to start: {self._start_error}")
            await asyncio.sleep(0.05)

    def begin_drain(self) -> None:
        self._draining = True

    async def shutdown(self, grace_seconds: float = 30.0) -> None:
        self.begin_drain()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace_seconds)
        except TimeoutError:
            log.warning(
                "drain: %d requests still running after %.0fs; ending them",
                len(self._requests),
                grace_seconds,
            )
        self._fail_all(EngineDeadError("server is shutting down"), "shutdown")
        self._closing = True
        if self._worker is not None:
            await asyncio.to_thread(self._worker.stop)

    # tokenizer

    async def encode(self, text: str) -> list[int]:
        return await asyncio.to_thread(self.tokenizer.encode, text)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.token_text(token_id)

    # requests

    async def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        request_id: str,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        timeout: float | None = None,
        skip_special_tokens: bool = True,
    ) -> AsyncIterator[GenerationDelta]:
        """Stream one request's deltas; the last has finish_reason and timings.

        Raises before the first delta: InvalidRequestError, OverloadedError (with retry_after),
        EngineNotReadyError. Mid-stream: EngineDeadError when the worker dies. Leaving the
        iteration early (break, aclose, task cancellation) aborts the request in the worker.
        """
        req = self._admit(
            prompt_ids,
            params,
            request_id,
            stop,
            include_stop_str_in_output,
            timeout,
            skip_special_tokens,
        )
        try:
            while True:
                item = await req.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            if self._requests.get(request_id) is req:  # left early: stop the work
                self._finish(req, "disconnected")
                self._send(AbortRequest(request_id))

    def _admit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        stop: Sequence[str],
        include_stop: bool,
        timeout: float | None,
        skip_special_tokens: bool,
    ) -> RequestState:
        if not self.is_ready or self._limits is None or self._worker is None:
            reason = "draining for shutdown" if self._draining else "starting or restarting"
            raise EngineNotReadyError(f"engine not ready ({reason}); retry shortly")
        validate_request(prompt_ids, params, self._limits)
        if request_id in self._requests:
            raise InvalidRequestError("request_id", f"{request_id!r} is already in use")
        if timeout is not None and timeout <= 0:
            raise InvalidRequestError("timeout", f"must be > 0 seconds, got {timeout}")
        self.admission.check(len(self._requests), self._queued_tokens, len(prompt_ids))
        detok = IncrementalDetokenizer(
            self.tokenizer.token_bytes,
            self.tokenizer.special_ids,
            stop,
            include_stop,
            skip_special_tokens,
        )
        req = RequestState(request_id, len(prompt_ids), detok, time.monotonic())
        if timeout is not None:
            assert self._loop is not None
            req.deadline = self._loop.call_later(timeout, self._expire, request_id)
        self._requests[request_id] = req
        self._queued_tokens += req.num_prompt_tokens
        self._idle.clear()
        self._send(AddRequest(request_id, tuple(prompt_ids), params))
        return req

    def _finish(self, req: RequestState, outcome: str) -> None:
        self._requests.pop(req.request_id, None)
        if self._request_sink is not None:
            self._request_sink(req.record(outcome, time.monotonic()))
        if req.scheduled_at is None:
            self._queued_tokens -= req.num_prompt_tokens
        if req.deadline is not None:
            req.deadline.cancel()
        self.admission.record_finished()
        if not self._requests:
            self._idle.set()

    def _expire(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is None:
            return
        self._send(AbortRequest(request_id))
        tail = req.detok.add([], final=True)
        self._finish(req, "timeout")
        req.queue.put_nowait(req.delta(tail.text, (), (), "timeout", None, time.monotonic()))

    # worker output, on the event loop

    def _on_message(self, msg: Any) -> None:
        if isinstance(msg, StepResult):
            for out in msg.outputs:
                req = self._requests.get(out.request_id)
                if req is not None:
                    self._on_output(req, out)
            if msg.stats is not None:
                self.last_stats = msg.stats
                self.recent_step_seconds.append(msg.stats.step_seconds)
                if self._stats_sink is not None:
                    self._stats_sink(msg.stats)
        elif isinstance(msg, RequestRejected):
            req = self._requests.get(msg.request_id)
            if req is not None:
                self._finish(req, "validation")
                req.queue.put_nowait(InvalidRequestError(msg.field, msg.message))
        elif isinstance(msg, WorkerReady):
            self.info = msg.info
            self._limits = ModelLimits(msg.info.vocab_size, msg.info.max_model_len)
            self._ready.set()
            log.info(
                "engine ready: %s on %s (%s)", msg.info.model_id, msg.info.device, msg.info.dtype
            )

    def _on_output(self, req: RequestState, out: RequestOutput) -> None:
        now = time.monotonic()
        if req.scheduled_at is None and out.first_scheduled_time is not None:
            req.scheduled_at = out.first_scheduled_time
            self._queued_tokens -= req.num_prompt_tokens
        if out.new_token_ids:
            req.on_tokens(now)
        req.num_output_tokens = out.num_output_tokens
        delta = req.detok.add(out.new_token_ids, final=out.finished)
        finish = out.finish_reason
        stop_reason: str | int | None = None
        if delta.stop_string is not None:
            finish, stop_reason = "stop", delta.stop_string
            if not out.finished:
                self._send(AbortRequest(req.request_id))
        elif finish == "stop" and out.new_token_ids:
            stop_reason = out.new_token_ids[-1]
        if finish is not None:
            self._finish(req, finish)
        req.queue.put_nowait(
            req.delta(
                delta.text,
                out.new_token_ids,
                out.new_logprobs,
                finish,
                stop_reason,
                now,
                prompt_logprobs=out.prompt_logprobs,
            )
        )

    # worker process management

    def _spawn(self) -> None:
        assert self._loop is not None
        loop = self._loop
        self._start_error = None
        self._worker = WorkerProcess(
            self.config,
            self.model_id,
            on_message=lambda m: loop.call_soon_threadsafe(self._on_message, m),
            on_exit=lambda code, err: loop.call_soon_threadsafe(self._on_worker_exit, code, err),
        )

    def _on_worker_exit(self, exitcode: int | None, error: str | None) -> None:
        was_ready = self._ready.is_set()
        self._ready.clear()
        if self._closing:
            return
        if not was_ready and self.worker_restarts == 0:
            self._start_error = error or f"worker exited with code {exitcode}"
            return
        log.error(
            "engine worker exited (code %s, %s); failing %d requests and restarting",
            exitcode,
            error,
            len(self._requests),
        )
        self._fail_all(
            EngineDeadError(
                f"engine worker died (exit code {exitcode}); the request was lost, retry it"
            ),
            "worker_lost",
        )
        delay = RESTART_BACKOFF_SECONDS[min(self.worker_restarts, len(RESTART_BACKOFF_SECONDS) - 1)]
        self.worker_restarts += 1
        assert self._loop is not None
        self._loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        if not self._closing:
            self._spawn()

    def _fail_all(self, error: BaseException, outcome: str) -> None:
        for req in list(self._requests.values()):
            self._finish(req, outcome)
            req.queue.put_nowait(error)

    def _send(self, msg: Any) -> None:
        if self._worker is not None:
            self._worker.send(msg)

    def stats(self) -> dict[str, object]:
        """A live view of the scheduler and the worker, for operators."""
        from app.engine.client.stats_view import describe

        return describe(self)
