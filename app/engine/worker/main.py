"""The worker process: owns the model, the KV cache and the scheduler; steps as long as there is
work, and sleeps on its inbox when there is none.

Started with the spawn method (app/engine/client/worker_handle.py): torch is imported here, in a
fresh interpreter, never in the API process. Requests arrive validated (AddRequest); the worker
applies them as they are.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from typing import Any

from app.engine.config import EngineConfig
from app.engine.protocol import (
    AbortRequest,
    AddRequest,
    ModelInfo,
    SamplingParams,
    Shutdown,
    StepResult,
    WorkerFailed,
    WorkerReady,
)

log = logging.getLogger(__name__)
PARENT_CHECK_SECONDS = 1.0


def run_worker(config: EngineConfig, model_id: str, inbox: Queue[Any], outbox: Connection) -> None:
    """The worker's life. Commands arrive on `inbox`; every message out is one pickled frame
    on the `outbox` pipe, encoded here on the step loop's thread (so the host cost per token
    the engine reports includes it)."""
    from app.request_log import configure_logging  # stdlib only: same format as the API

    # Ctrl+C reaches the whole process group: the API process drains, then stops this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(
        os.environ.get("GPT2_LOG_FORMAT", "json"), os.environ.get("GPT2_LOG_LEVEL", "INFO")
    )
    try:
        from app.engine.worker.engine_core import EngineCore

        core = EngineCore(config)
        _warm_up(core)
    except Exception as exc:  # report, don't hang the parent waiting for "ready"
        log.exception("worker failed to start")
        send(outbox, WorkerFailed(f"{type(exc).__name__}: {exc}"))
        return
    send(outbox, WorkerReady(_model_info(core, model_id)))
    parent = os.getppid()
    while True:
        try:
            if not _apply_inbox(core, inbox, block=not core.has_unfinished()):
                return
        except queue.Empty:  # idle and nothing came: is the parent still there?
            if os.getppid() != parent:
                return
            continue
        result: StepResult = core.step()
        if len(result) or result.stats is not None:
            try:
                send(outbox, result)
            except (BrokenPipeError, OSError):  # the API process is gone
                return


def send(outbox: Connection, msg: object) -> None:
    outbox.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))


def _apply_inbox(core: Any, inbox: Queue[Any], block: bool) -> bool:
    """Apply every queued command; returns False on Shutdown. Raises queue.Empty on an idle
    timeout so the caller can check on its parent."""
    msg = inbox.get(timeout=PARENT_CHECK_SECONDS) if block else _get_nowait(inbox)
    while msg is not None:
        if isinstance(msg, Shutdown):
            return False
        if isinstance(msg, AddRequest | AbortRequest):
            core.apply(msg)
        msg = _get_nowait(inbox)
    return True


def _get_nowait(inbox: Queue[Any]) -> Any:
    try:
        return inbox.get_nowait()
    except queue.Empty:
        return None


def _warm_up(core: Any) -> None:
    """One short request end to end: first-call allocations happen here, not in a user's TTFT."""
    core.add_request(
        AddRequest("warm-up", (core.eos_token_id,), SamplingParams(max_tokens=2, temperature=0))
    )
    while core.has_unfinished():
        core.step()


def _model_info(core: Any, model_id: str) -> ModelInfo:
    runner = core.runner
    return ModelInfo(
        model_id=model_id,
        model_path=str(runner.model_dir),
        vocab_size=core.limits.vocab_size,
        max_model_len=core.limits.max_model_len,
        eos_token_id=core.eos_token_id,
        dtype=str(runner.dtype).removeprefix("torch."),
        device=str(runner.device),
        max_num_seqs=core.config.max_num_seqs,
        kv_slots=core.slots.num_slots,
        quantization=core.config.quantization,
    )
