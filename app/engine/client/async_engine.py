"""AsyncEngine: the EngineClient the HTTP layer uses, over an engine in a worker process.

It only composes the three jobs of the API process's side, each in its own class:
- WorkerHandle (worker_handle.py): spawn the worker, restart it when it dies; or, as one of
  several API processes (--api-workers), RemoteWorker (remote_worker.py): connect to the worker
  the supervisor runs, and again after it is restarted;
- AdmissionControl (admission.py): bound what is in flight, with Retry-After;
- OutputProcessor (output_processor.py): per-step token ids -> per-request text deltas.
Plus the tokenizer, the drain, and the operator's view (stats). No torch here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.engine.client.admission import AdmissionControl
from app.engine.client.output_processor import OutputProcessor
from app.engine.client.remote_worker import ApiProcess, RemoteWorker
from app.engine.client.request_entry import RequestEntry
from app.engine.client.request_state import RequestState
from app.engine.client.tokenizer import GPT2Tokenizer, load_tokenizer
from app.engine.client.validation import ModelLimits, check_text_fits, validate_request
from app.engine.client.worker_handle import WorkerHandle
from app.engine.config import EngineConfig
from app.engine.errors import EngineDeadError, EngineNotReadyError
from app.engine.protocol import (
    AbortRequest,
    DeltaSink,
    ModelInfo,
    Outcome,
    RequestRecord,
    SamplingParams,
    StepResult,
    StepStats,
)
from app.hub import resolve_model_dir

log = logging.getLogger(__name__)
# Texts tokenized at once. Tokenizing 900 KB takes ~0.5 s and ~100 MB; more threads would not
# be faster on the cores the worker also needs, only hold more memory at once.
TOKENIZE_THREADS = 2
# Texts up to this many characters are tokenized on the event loop, not in the pool: the
# hand-off costs more than the work. Measured (2-core machine, real GPT-2 tokenizer): encoding
# takes ~15 µs + ~0.45 µs a character; a pool round trip costs ~90 µs of the loop thread's own
# CPU and ~150 µs in all. At 256 characters inline is ~120 µs, about what the hand-off alone
# takes of the loop, and half the total CPU; it is also the longest stall of the loop it
# allows, a small part of one step's output processing for 64 streams. Longer texts keep the
# pool (no stall: encode_batch releases the GIL).
INLINE_ENCODE_CHARS = 256


class AsyncEngine(RequestEntry):
    def __init__(
        self,
        config: EngineConfig,
        *,
        model_id: str | None = None,
        max_queued_requests: int = 256,
        max_queued_tokens: int = 262144,
        stats_sink: Callable[[StepStats], None] | None = None,
        request_sink: Callable[[RequestRecord], None] | None = None,
        api_process: ApiProcess | None = None,
    ) -> None:
        self.tokenizer: GPT2Tokenizer = load_tokenizer(resolve_model_dir(config.model))
        self.admission = AdmissionControl(
            config.max_num_seqs,
            max_queued_requests,
            max_queued_tokens,
            processes=api_process.count if api_process is not None else 1,
        )
        self.outputs = OutputProcessor(
            self.tokenizer.token_bytes,
            self.tokenizer.special_ids,
            self.admission,
            abort=self._abort,
            record_sink=request_sink,
        )
        self.worker: WorkerHandle | RemoteWorker = (
            WorkerHandle(config, model_id or config.model, self._on_message, self._on_worker_lost)
            if api_process is None
            else RemoteWorker(api_process.worker_address, self._on_message, self._on_worker_lost)
        )
        self._stats_sink = stats_sink
        self._handles = itertools.count(1)  # AddRequest.handle
        self._tokenize_pool = ThreadPoolExecutor(TOKENIZE_THREADS, thread_name_prefix="tokenize")
        self._drain_deadline: float | None = None  # loop time; set once, by begin_drain
        self.last_stats: StepStats | None = None
        self.recent_step_seconds: deque[float] = deque(maxlen=50)

    # ---- state ------------------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        if self.worker.info is None:
            raise EngineNotReadyError("the engine is starting; retry shortly")
        return self.worker.info

    @property
    def is_ready(self) -> bool:
        return self.worker.is_ready and not self.is_draining

    @property
    def is_draining(self) -> bool:
        return self._drain_deadline is not None

    @property
    def is_worker_alive(self) -> bool:
        return self.worker.is_alive

    @property
    def worker_restarts(self) -> int:
        return self.worker.restarts

    @property
    def num_in_flight(self) -> int:
        return len(self.outputs.requests)

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.worker.start()

    def begin_drain(self, grace_seconds: float) -> None:
        if self._drain_deadline is None:
            self._drain_deadline = asyncio.get_running_loop().time() + grace_seconds

    async def wait_drained(self) -> None:
        """Until nothing is in flight, or the drain deadline passes: then what is still running
        ends at once (see end_all), so every caller can still be answered before the server
        closes its connections."""
        assert self._drain_deadline is not None, "begin_drain first"
        remaining = self._drain_deadline - asyncio.get_running_loop().time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.outputs.idle.wait(), timeout=max(0.0, remaining))
        if self.outputs.requests:
            log.warning("drain: %d requests still running; ending them", self.num_in_flight)
            self.end_all()

    def end_all(self) -> None:
        """End every request in flight now: each caller gets EngineDeadError("server is shutting
        down") (a 503, or an error event and [DONE] in a stream), each is counted once with
        outcome shutdown, and the worker is told to abort each."""
        ids = list(self.outputs.requests)
        self.outputs.fail_all(EngineDeadError("server is shutting down"), Outcome.SHUTDOWN)
        for request_id in ids:
            self._abort(request_id)

    def end_now(self) -> None:
        """The second signal: end every request and kill the worker, without waiting."""
        self.begin_drain(0.0)
        self.end_all()
        self.worker.kill(restart=False)

    async def shutdown(self, grace_seconds: float = 30.0) -> None:
        """Drain (within the deadline of an earlier begin_drain, else grace_seconds from now),
        end what is still running, stop the worker (a bounded wait, then it is killed)."""
        self.begin_drain(grace_seconds)
        await self.wait_drained()
        await self.worker.stop()
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

    # ---- tokenizer ----------------------------------------------------------------------

    async def encode(self, text: str, *, max_tokens: int | None = None) -> list[int]:
        if max_tokens is not None and self.tokenizer.max_token_bytes is not None:
            check_text_fits(text, self.tokenizer.max_token_bytes, max_tokens)
        if len(text) <= INLINE_ENCODE_CHARS:
            return self.tokenizer.encode(text)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenize_pool, self.tokenizer.encode, text)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.token_text(token_id)

    # ---- requests (generate and add_request: RequestEntry, over this _add) ----------------

    def _add(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        sink: DeltaSink | None,
        arrival: float | None = None,
    ) -> RequestState:
        """Validate, admit, register and send one request to the worker."""
        if not self.is_ready or self.worker.info is None:
            reason = "draining for shutdown" if self.is_draining else "starting or restarting"
            raise EngineNotReadyError(f"engine not ready ({reason}); retry shortly")
        info = self.worker.info
        limits = ModelLimits(info.vocab_size, info.max_model_len)
        request = validate_request(request_id, prompt_ids, params, limits, next(self._handles))
        self.admission.admit(len(prompt_ids))
        try:
            req = self.outputs.add(
                request_id, request.handle, len(prompt_ids), params, sink, arrival
            )
        except BaseException:
            self.admission.release(len(prompt_ids), was_scheduled=False)
            raise
        self.worker.send(request)
        return req

    def _abort(self, request_id: str) -> None:
        self.worker.send(AbortRequest(request_id))

    # ---- worker events, on the event loop ---------------------------------------------------

    def _on_message(self, msg: Any) -> None:
        if isinstance(msg, StepResult):
            self.outputs.process(msg)
            if msg.stats is not None:
                self.last_stats = msg.stats
                self.recent_step_seconds.append(msg.stats.step_seconds)
                if self._stats_sink is not None:
                    self._stats_sink(msg.stats)

    def _on_worker_lost(self, exitcode: int | None, error: str | None) -> None:
        log.error(
            "engine worker exited (code %s, %s); failing %d requests and restarting",
            exitcode,
            error,
            self.num_in_flight,
        )
        self.last_stats = None  # the dead worker's batch and KV are gone with it
        self.outputs.fail_all(
            EngineDeadError(
                f"engine worker died (exit code {exitcode}); the request was lost, retry it"
            ),
            Outcome.WORKER_LOST,
        )

    # ---- operators ------------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        return engine_stats(
            ready=self.is_ready,
            draining=self.is_draining,
            worker_alive=self.is_worker_alive,
            worker_pid=self.worker.pid,
            worker_restarts=self.worker_restarts,
            in_flight=self.num_in_flight,
            queued_prompt_tokens=self.admission.queued_tokens,
            last=self.last_stats,
            recent_step_seconds=list(self.recent_step_seconds),
            drain_rate=self.admission.drain_rate(),
        )


def engine_stats(
    *,
    ready: bool,
    draining: bool,
    worker_alive: bool,
    worker_pid: int | None,
    worker_restarts: int,
    in_flight: int,
    queued_prompt_tokens: int,
    last: StepStats | None,
    recent_step_seconds: list[float],
    drain_rate: float,
) -> dict[str, object]:
    """The operator's view (/v1/engine/stats): scheduler counts, KV use, recent step times."""
    s = last
    steps = sorted(recent_step_seconds)
    view: dict[str, object] = {
        "ready": ready,
        "draining": draining,
        "worker_alive": worker_alive,
        "worker_pid": worker_pid,
        "worker_restarts": worker_restarts,
        "requests_in_flight": in_flight,
        "queued_prompt_tokens": queued_prompt_tokens,
        "num_running": s.num_running if s else 0,
        "num_waiting": s.num_waiting if s else 0,
        "kv_blocks_used": s.kv_blocks_used if s else 0,
        "kv_blocks_total": s.kv_blocks_total if s else None,
        "last_batch": {
            "sequences": s.batch_size,
            "decode_tokens": s.num_decode_tokens,
            "prefill_tokens": s.num_prefill_tokens,
        }
        if s
        else None,
        "recent_step_seconds": {
            "count": len(steps),
            "p50": steps[len(steps) // 2] if steps else None,
            "max": steps[-1] if steps else None,
        },
        "recent_step_ms": [round(x * 1000.0, 3) for x in recent_step_seconds],
        "drain_rate_requests_per_second": drain_rate,
    }
    if s is not None and s.kv_blocks_total:
        view["kv_cache_usage"] = s.kv_blocks_used / s.kv_blocks_total
    return view
