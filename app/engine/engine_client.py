"""EngineClient: the typed interface the HTTP layer depends on.

app/engine/client/async_engine.py implements it over a worker process; the API tests' fake
implements it over a scripted worker. What it takes and hands back is declared in protocol.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from app.engine.protocol import DeltaSink, GenerationDelta, ModelInfo, SamplingParams


class EngineClient(Protocol):
    """What the HTTP layer needs of the engine (app/engine/client/async_engine.py implements it
    over a worker process; the API tests' fake implements it over a scripted worker)."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def is_ready(self) -> bool: ...

    @property
    def is_draining(self) -> bool: ...

    @property
    def is_worker_alive(self) -> bool: ...

    @property
    def worker_restarts(self) -> int: ...

    @property
    def num_in_flight(self) -> int: ...

    async def encode(self, text: str, *, max_tokens: int | None = None) -> list[int]:
        """Text to token ids, off the event loop, a bounded number at once. With max_tokens,
        a text too long to encode in that many tokens whatever its tokenization raises
        InvalidRequestError before any tokenizing (see validation.check_text_fits)."""
        ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def token_text(self, token_id: int) -> str:
        """One token as text; bytes that are not valid UTF-8 alone become 'bytes:\\xNN'."""
        ...

    def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, *, request_id: str
    ) -> AsyncIterator[GenerationDelta]:
        """Stream one request's deltas; the last has finish_reason and timings.

        Raises before the first delta: InvalidRequestError, OverloadedError (with
        retry_after), EngineNotReadyError. Mid-stream: EngineDeadError when the worker dies.
        Leaving the iteration early (break, aclose, task cancellation) aborts the request.
        """
        ...

    def add_request(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        request_id: str,
        sink: DeltaSink,
        arrival: float | None = None,
    ) -> Callable[[], None]:
        """generate() without an iterator: start the request now, and deliver its deltas by
        calling sink(delta) on the event loop as the engine processes the worker's output (the
        last has finish_reason and timings), or sink(error) once instead of the rest
        (EngineDeadError). No task or queue of its own: several requests may share one sink,
        which must only store what it gets and return.

        `arrival` (time.monotonic()) is where the request's timings start: when the caller's
        request arrived, if earlier than now.

        Raises at once, having delivered nothing: InvalidRequestError, OverloadedError (with
        retry_after), EngineNotReadyError. Returns `leave`: call it when the caller stops
        reading; a request still running is then aborted. Calling it again, or after the
        request ended, does nothing.
        """
        ...

    def stats(self) -> dict[str, object]:
        """A live view of the scheduler and the worker, for operators (/v1/engine/stats)."""
        ...

    def begin_drain(self, grace_seconds: float) -> None:
        """Refuse new requests from now on; in-flight ones have grace_seconds to finish (the
        first call sets the deadline; later ones keep it)."""
        ...

    async def wait_drained(self) -> None:
        """Return once nothing is in flight, or once the drain deadline has passed and what was
        still running has been ended (EngineDeadError "server is shutting down", outcome
        shutdown), so that each caller is answered before the server closes connections."""
        ...

    async def shutdown(self, grace_seconds: float) -> None:
        """Drain (within the deadline of an earlier begin_drain, else grace_seconds from now),
        end what is still running, stop the worker."""
        ...
