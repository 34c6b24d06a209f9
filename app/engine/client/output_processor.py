"""Output processing: the worker's per-step token ids -> each request's text deltas.

One instance holds every request from acceptance to its last delta: it detokenizes
incrementally (stop strings held back and applied), keeps the timing marks, ends a request whose
deadline ran out, and reports each request's RequestRecord exactly once, whatever the way it
ends. It never talks to the worker itself: it asks for aborts through the `abort` callback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence

from app.engine.client.admission import AdmissionControl
from app.engine.client.detokenizer import IncrementalDetokenizer
from app.engine.client.request_state import RequestState
from app.engine.errors import InvalidRequestError
from app.engine.protocol import (
    FINISH_CODES,
    DeltaSink,
    FinishReason,
    GenerationDelta,
    Outcome,
    RequestRecord,
    SamplingParams,
    StepResult,
    TokenLogprobs,
)


class OutputProcessor:
    def __init__(
        self,
        token_bytes: Sequence[bytes],
        special_ids: frozenset[int],
        admission: AdmissionControl | None,
        abort: Callable[[str], object],
        record_sink: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self._token_bytes = token_bytes
        self._special_ids = special_ids
        self._admission = admission
        self._abort = abort
        self._record_sink = record_sink
        self.requests: dict[str, RequestState] = {}
        self._by_handle: dict[int, RequestState] = {}
        self.idle = asyncio.Event()
        self.idle.set()

    def add(
        self,
        request_id: str,
        handle: int,
        num_prompt_tokens: int,
        params: SamplingParams,
        sink: DeltaSink | None = None,
        arrival: float | None = None,
    ) -> RequestState:
        """Register an admitted request (AdmissionControl.admit has counted it). Its deltas go
        to `sink`, else to its queue (read by deltas()). Its timings start at `arrival`
        (time.monotonic(); now by default). A deadline (params.timeout) needs a running event
        loop."""
        if request_id in self.requests:
            raise InvalidRequestError("request_id", f"{request_id!r} is already in use")
        detok = IncrementalDetokenizer(
            self._token_bytes,
            self._special_ids,
            params.stop,
            params.include_stop_str_in_output,
            params.skip_special_tokens,
        )
        now = time.monotonic()
        start = now if arrival is None else min(arrival, now)
        req = RequestState(request_id, num_prompt_tokens, detok, start, handle, sink)
        if params.timeout is not None:
            loop = asyncio.get_running_loop()
            req.deadline = loop.call_later(params.timeout, self.expire, request_id)
        self.requests[request_id] = req
        self._by_handle[handle] = req
        self.idle.clear()
        return req

    async def deltas(self, req: RequestState) -> AsyncIterator[GenerationDelta]:
        """The deltas of a request added without a sink, as they come; raises the error that
        ended it, if one did."""
        while True:
            item = await req.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finished:
                return

    def leave(self, req: RequestState) -> None:
        """The caller stopped reading: if the request is still running, it is abandoned."""
        if self.requests.get(req.request_id) is req:
            self.finish(req, Outcome.DISCONNECTED)
            self._abort(req.request_id)

    def process(self, step: StepResult) -> None:
        """One worker step: a delta for every row whose request is still here.

        Most rows are the common case: one token, not the last, no extras (scheduled time,
        cached tokens, logprobs, prompt logprobs). Those take the inline path below, which does
        what _row and _advance do for such a row (the equivalence tests in
        tests/engine/test_output_fast_path.py hold the two to the same deltas and records)
        without the per-row tuples, dict lookups, DetokenizedDelta and calls: this loop runs
        for every streamed token, in the HTTP process. A stop string that matches takes
        _deliver, as _advance does."""
        now = time.monotonic()
        by_handle = self._by_handle
        extras = _Extras(step) if _has_extras(step) else None
        rows_with_extras = extras.rows if extras is not None else ()
        for row, (handle, token, code) in enumerate(
            zip(step.handles, step.tokens, step.finish, strict=True)
        ):
            req = by_handle.get(handle)
            if req is None:  # ended here already (left, expired, stopped by a stop string)
                continue
            if code or token < 0 or row in rows_with_extras:
                self._row(req, row, token, code, extras, now)
                continue
            req.on_tokens(now)
            req.num_output_tokens += 1
            detok = req.detok
            text = detok.add_one(token)
            if detok.stopped:  # a stop string matched: the request ends here
                self._deliver(req, (token,), (), None, None, now, text, detok.stop_string)
                continue
            req.put(
                GenerationDelta(
                    req.request_id,
                    text,
                    (token,),
                    (),
                    None,
                    req.num_prompt_tokens,
                    req.num_output_tokens,
                    None,
                    None,
                    None,
                    req.num_cached_tokens,
                )
            )

    def _row(
        self,
        req: RequestState,
        row: int,
        token: int,
        code: int,
        extras: _Extras | None,
        now: float,
    ) -> None:
        """Any row: what its extras say, then _advance."""
        lp = prompt_lp = None
        if extras is not None:
            at = extras.scheduled.get(row)
            if req.scheduled_at is None and at is not None:
                req.scheduled_at = at
                if self._admission is not None:
                    self._admission.scheduled(req.num_prompt_tokens)
            if extras.cached:
                req.num_cached_tokens = extras.cached.get(row, req.num_cached_tokens)
            lp = extras.logprobs.get(row)
            prompt_lp = extras.prompt_logprobs.get(row)
        self._advance(
            req,
            (token,) if token >= 0 else (),
            (lp,) if lp is not None else (),
            FINISH_CODES[code],
            prompt_lp,
            now,
        )

    def _advance(
        self,
        req: RequestState,
        new_ids: tuple[int, ...],
        new_logprobs: tuple[TokenLogprobs, ...],
        finish: FinishReason | None,
        prompt_logprobs: tuple[TokenLogprobs | None, ...] | None,
        now: float,
    ) -> None:
        if new_ids:
            req.on_tokens(now)
            req.num_output_tokens += len(new_ids)
        delta = req.detok.add(new_ids, final=finish is not None)
        self._deliver(
            req, new_ids, new_logprobs, finish, prompt_logprobs, now, delta.text, delta.stop_string
        )

    def _deliver(
        self,
        req: RequestState,
        new_ids: tuple[int, ...],
        new_logprobs: tuple[TokenLogprobs, ...],
        finish: FinishReason | None,
        prompt_logprobs: tuple[TokenLogprobs | None, ...] | None,
        now: float,
        text: str,
        stop_string: str | None,
    ) -> None:
        """The delta of a row whose tokens were counted and detokenized into `text`; ends the
        request if the row finishes it or a stop string matched."""
        stop_reason: str | int | None = None
        if stop_string is not None:
            if finish is None:
                self._abort(req.request_id)
            finish, stop_reason = FinishReason.STOP, stop_string
        elif finish is FinishReason.STOP and new_ids:
            stop_reason = new_ids[-1]
        if finish is not None:
            self.finish(req, Outcome.of(finish))
        req.put(
            req.delta(
                text,
                new_ids,
                new_logprobs,
                finish,
                stop_reason,
                now,
                prompt_logprobs=prompt_logprobs,
            )
        )

    def expire(self, request_id: str) -> None:
        """The request's deadline ran out: abort it and end its stream with "timeout"."""
        req = self.requests.get(request_id)
        if req is None:
            return
        self._abort(request_id)
        tail = req.detok.add([], final=True)
        self.finish(req, Outcome.TIMEOUT)
        now = time.monotonic()
        req.put(req.delta(tail.text, (), (), FinishReason.TIMEOUT, None, now))

    def fail(self, request_id: str, error: BaseException, outcome: Outcome) -> None:
        req = self.requests.get(request_id)
        if req is not None:
            self.finish(req, outcome)
            req.put(error)

    def fail_all(self, error: BaseException, outcome: Outcome) -> None:
        for request_id in list(self.requests):
            self.fail(request_id, error, outcome)

    def finish(self, req: RequestState, outcome: Outcome) -> None:
        """Forget the request and report how it ended (exactly once)."""
        if self.requests.pop(req.request_id, None) is None:
            return
        del self._by_handle[req.handle]
        if req.deadline is not None:
            req.deadline.cancel()
        if self._admission is not None:
            self._admission.release(req.num_prompt_tokens, req.scheduled_at is not None)
        if self._record_sink is not None:
            self._record_sink(req.record(outcome, time.monotonic()))
        if not self.requests:
            self.idle.set()


def _has_extras(step: StepResult) -> bool:
    return bool(step.scheduled or step.cached_tokens or step.logprobs or step.prompt_logprobs)


class _Extras:
    """A step's sparse extras by row, built only for a step that has some."""

    __slots__ = ("cached", "logprobs", "prompt_logprobs", "rows", "scheduled")

    def __init__(self, step: StepResult) -> None:
        self.scheduled = dict(step.scheduled)
        self.cached = dict(step.cached_tokens)
        self.logprobs = dict(step.logprobs)
        self.prompt_logprobs = dict(step.prompt_logprobs)
        self.rows = {*self.scheduled, *self.cached, *self.logprobs, *self.prompt_logprobs}
