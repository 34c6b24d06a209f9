"""The worker process: owns the model, the KV cache and the scheduler; steps as long as there is
work, and sleeps on its sockets when there is none.

Started with the spawn method (app/engine/client/worker_handle.py): torch is imported here, in a
fresh interpreter, never in the API process. Requests arrive validated (AddRequest); the worker
applies them as they are. Who sends them, and who gets which rows back: clients.py.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

from app.engine.config import EngineConfig
from app.engine.protocol import (
    AddRequest,
    ModelInfo,
    SamplingParams,
    StepResult,
    WorkerFailed,
    WorkerReady,
)
from app.engine.worker.clients import Clients

log = logging.getLogger(__name__)
PARENT_CHECK_SECONDS = 1.0


def run_worker(
    config: EngineConfig, model_id: str, owner: socket.socket, listen: str | None = None
) -> None:
    """The worker's life. `owner` is the spawning process's end of a socket pair: WorkerReady
    or WorkerFailed go there, Shutdown comes from there, and its closing ends the worker. Without
    `listen` the owner is also the one client (its requests and every step's results travel on
    it); with it, the API processes connect to a Unix socket at that path (clients.py). Every
    message is one frame, pickled on the step loop's thread (so the host cost per token the
    engine reports includes it)."""
    from app.request_log import configure_logging  # stdlib only: same format as the API

    # Ctrl+C reaches the whole process group: the API process drains, then stops this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(
        os.environ.get("GPT2_LOG_FORMAT", "json"), os.environ.get("GPT2_LOG_LEVEL", "INFO")
    )
    # Ctrl-C reaches the whole process group: the owner decides when the worker stops (after
    # draining), by Shutdown or by going away.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    clients = Clients(owner, owner_is_client=listen is None)
    try:
        from app.engine.worker.engine_core import EngineCore

        core = EngineCore(config)
        _warm_up(core)
    except Exception as exc:  # report, don't hang the parent waiting for "ready"
        # The owner reports it, in one line (the CLI's startup error): the traceback is DEBUG's.
        log.debug("worker failed to start", exc_info=True)
        clients.send_owner(WorkerFailed(f"{type(exc).__name__}: {exc}"))
        return
    ready = WorkerReady(_model_info(core, model_id), os.getpid())
    if listen is not None:
        clients.listen(listen, ready)
    if not clients.send_owner(ready):
        return
    import torch  # loaded by the engine already; imported here, never in the API process

    try:
        with torch.inference_mode():  # once for the loop, not once a step (device.inference)
            _serve(core, clients)
    finally:
        clients.close()


def _serve(core: Any, clients: Clients) -> None:
    parent = os.getppid()
    while True:
        busy = core.has_unfinished()
        came = clients.poll(core, 0 if busy else PARENT_CHECK_SECONDS)
        if came is False:  # Shutdown, or the owner is gone
            return
        if came is None and not busy:  # idle and nothing came: is the parent still there?
            if os.getppid() != parent:
                return
            continue
        result: StepResult = core.step()
        if (len(result) or result.stats is not None) and not clients.send_step(result, core):
            return  # the owner, the one client, is gone


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
        kv_blocks=core.kv.num_blocks,
        kv_block_size=core.kv.block_size,
        quantization=core.config.quantization,
    )
