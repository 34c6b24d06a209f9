"""EngineClient: the asyncio side of the engine, living in the API process (no torch here).

It starts the worker process, tokenizes and detokenizes, enforces the waiting-queue bound, turns
the worker's per-step token ids into per-request text deltas with stop strings applied, and ends
every in-flight request with an error if the worker dies (then starts a new one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from app.engine.config import EngineConfig
from app.engine.params import SamplingParams
from app.engine.protocol import GenerationDelta, ModelInfo, StepStats


class EngineClient:
    info: ModelInfo

    def __init__(
        self,
        config: EngineConfig,
        *,
        max_queued_requests: int = 256,
        max_queued_tokens: int = 262144,
        stats_sink: Callable[[StepStats], None] | None = None,
    ) -> None:
        raise NotImplementedError

    @property
    def is_ready(self) -> bool:
        """Worker loaded and warmed up, and not draining."""
        raise NotImplementedError

    @property
    def is_draining(self) -> bool:
        raise NotImplementedError

    async def start(self) -> None:
        """Start the worker and wait until it is ready (raises if it cannot load the model)."""
        raise NotImplementedError

    def begin_drain(self) -> None:
        """Stop accepting requests (they get EngineNotReadyError); in-flight ones continue."""
        raise NotImplementedError

    async def shutdown(self, grace_seconds: float = 30.0) -> None:
        """Drain: wait up to grace_seconds for in-flight requests, abort the rest, stop worker."""
        raise NotImplementedError

    async def encode(self, text: str) -> list[int]:
        """Tokenize off the event loop."""
        raise NotImplementedError

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        """One token as text (for logprobs); a partial UTF-8 byte shows as its byte escape."""
        raise NotImplementedError

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        request_id: str,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[GenerationDelta]:
        """Stream one request's deltas; the last has finish_reason (and timings).

        Raises before the first delta: InvalidRequestError (bad input, e.g. prompt + max_tokens
        beyond the context window), OverloadedError (queue full; has retry_after), and
        EngineNotReadyError (starting, restarting or draining). Mid-stream: EngineDeadError
        when the worker dies. Leaving the iteration early (break, aclose, task cancellation)
        aborts the request in the worker.
        """
        raise NotImplementedError

    def stats(self) -> dict[str, object]:
        """A live view of the scheduler, for operators."""
        raise NotImplementedError
