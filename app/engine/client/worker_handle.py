"""The worker as seen from the process that owns it.

WorkerProcess is one spawned process and the owner's end of a socket pair to it. WorkerHandle
keeps a worker running: it spawns one, says when it is ready, and when it dies reports the loss
and starts a new one after a backoff. The owner is the API process itself (one API process: the
socket pair also carries its requests and the step results), or with --api-workers the
supervisor (app/api_workers.py), whose worker listens for the API processes on a Unix socket
(remote_worker.py); the restart logic is this one either way.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import socket
import time
from collections.abc import Callable
from typing import Any

from app.engine.client.channel import Channel
from app.engine.config import EngineConfig
from app.engine.protocol import ModelInfo, Shutdown, WorkerFailed, WorkerReady

log = logging.getLogger(__name__)
# How long a worker told to stop may take to finish its step and exit before it is terminated,
# then killed: part of the shutdown's bound (docs/operations.md).
STOP_SECONDS = 3.0
RESTART_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0)
# A worker that served this long before it died starts the backoff over: the crashes are not
# in a row, and readiness should not wait 10 s for an isolated one.
STABLE_SECONDS = 60.0


class WorkerProcess:
    """Starts run_worker in a fresh interpreter (spawn: torch and CUDA never see a fork).

    Messages both ways are frames on a socket pair; the event loop reads the owner's end
    (channel.py), so a step's message is read and handled on the loop itself. Only the worker
    holds the other end: when it exits the socket reports EOF, and on_exit fires once, on the
    loop."""

    def __init__(
        self,
        config: EngineConfig,
        model_id: str,
        listen: str | None,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Any], object],
        on_exit: Callable[[int | None, str | None], object],
    ) -> None:
        ctx = mp.get_context("spawn")
        mine, theirs = socket.socketpair()
        from app.engine.worker.main import run_worker

        self._process = ctx.Process(
            target=run_worker,
            args=(config, model_id, theirs, listen),
            name="gpt2-engine-worker",
            daemon=True,
        )
        self._process.start()
        theirs.close()
        self._pid = self._process.pid
        # Closed once it has exited (_release): spawning keeps two pipe ends open in this
        # process until then, which a worker restart would otherwise leave to the garbage
        # collector (rare here: its thresholds are raised in app/main.py).
        self._exitcode: int | None = None  # set when the process object is closed
        # Two threads may join it: the socket's reaping (_closed) and stop's. It is closed when
        # the one in flight is done, so neither sees a closed object.
        self._reaped = False
        self._joining = False
        self._loop = loop
        self._on_message, self._on_exit = on_message, on_exit
        self._error: str | None = None
        self._channel = Channel(self._received, self._closed)
        self._opening = loop.create_task(
            loop.create_unix_connection(lambda: self._channel, sock=mine)
        )

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def _released(self) -> bool:
        return self._exitcode is not None

    def is_alive(self) -> bool:
        return not self._released and self._process.is_alive()

    def send(self, msg: Any) -> None:
        self._channel.send(msg)

    def kill(self) -> None:
        if not self._released:
            self._process.kill()

    async def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Ask the worker to exit and wait for it (then terminate, then kill)."""
        if self._released:
            return
        self._joining = True
        self.send(Shutdown())
        try:
            await asyncio.to_thread(self._join, timeout)
        finally:
            self._joining = False
        if self._reaped:
            self._release()

    def _join(self, timeout: float) -> None:
        self._process.join(timeout)
        if self._process.is_alive():
            log.warning("engine worker did not stop in %.0fs; terminating it", timeout)
            self._process.terminate()
            self._process.join(1)
        if self._process.is_alive():  # stopped (SIGSTOP) or stuck where SIGTERM cannot reach
            self._process.kill()
            self._process.join(1)

    def _received(self, msg: Any) -> None:
        if isinstance(msg, WorkerFailed):
            self._error = msg.error
        self._on_message(msg)

    def _closed(self) -> None:
        # The socket is closed once the process is gone or going: reap it off the loop.
        waiting = self._loop.run_in_executor(None, self._process.join, 5.0)
        waiting.add_done_callback(lambda _: self._exited())

    def _exited(self) -> None:
        self._reaped = True
        if not self._joining:
            self._release()
        self._on_exit(self._exitcode if self._released else self._process.exitcode, self._error)

    def _release(self) -> None:
        """Close the process object (its spawn pipes) once the process has exited."""
        if not self._released and self._process.exitcode is not None:
            self._exitcode = self._process.exitcode
            self._process.close()


class WorkerHandle:
    """Keeps one worker process running. Callbacks run on the event loop: on_message for every
    message but the ready one, on_lost when a worker that was serving dies (a new one is
    started after a backoff)."""

    def __init__(
        self,
        config: EngineConfig,
        model_id: str,
        on_message: Callable[[Any], None],
        on_lost: Callable[[int | None, str | None], None],
        *,
        listen: str | None = None,
    ) -> None:
        self._config = config
        self._model_id = model_id
        self._listen = listen  # the worker's socket for the API processes (--api-workers)
        self._on_message = on_message
        self._on_lost = on_lost
        self._process: WorkerProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._start_error: str | None = None
        self._closing = False
        self.info: ModelInfo | None = None
        self.restarts = 0  # in this process's lifetime
        self._backoff = 0  # crashes in a row: index into RESTART_BACKOFF_SECONDS
        self._ready_at: float | None = None
        self._clock = time.monotonic

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    @property
    def is_alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> ModelInfo:
        """Spawn the worker and wait until it has loaded and warmed up the model."""
        self._loop = asyncio.get_running_loop()
        self._spawn()
        while not self._ready.is_set():
            if self._start_error is not None:
                raise RuntimeError(f"engine worker failed to start: {self._start_error}")
            await asyncio.sleep(0.05)
        assert self.info is not None
        return self.info

    def send(self, msg: Any) -> None:
        if self._process is not None:
            self._process.send(msg)

    def kill(self, *, restart: bool = True) -> None:
        """Kill the worker outright (tests of the restart path; the second signal, with no
        restart)."""
        if not restart:
            self._closing = True
        if self._process is not None:
            self._process.kill()

    async def stop(self) -> None:
        self._closing = True
        if self._process is not None:
            await self._process.stop()

    def _spawn(self) -> None:
        assert self._loop is not None
        loop = self._loop
        self._start_error = None
        self._ready_at = None
        self._process = WorkerProcess(
            self._config,
            self._model_id,
            self._listen,
            loop,
            on_message=self._dispatch,
            on_exit=self._on_exit,
        )

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, WorkerReady):
            self.info = msg.info
            self._ready_at = self._clock()
            self._ready.set()
            log.info(
                "engine ready: %s on %s (%s)", msg.info.model_id, msg.info.device, msg.info.dtype
            )
        else:
            self._on_message(msg)

    def _on_exit(self, exitcode: int | None, error: str | None) -> None:
        was_ready = self._ready.is_set()
        self._ready.clear()
        if self._closing:
            return
        if not was_ready and self.restarts == 0:
            self._start_error = error or f"worker exited with code {exitcode}"
            return
        self._on_lost(exitcode, error)
        if self._ready_at is not None and self._clock() - self._ready_at >= STABLE_SECONDS:
            self._backoff = 0
        delay = RESTART_BACKOFF_SECONDS[min(self._backoff, len(RESTART_BACKOFF_SECONDS) - 1)]
        self._backoff += 1
        self.restarts += 1
        assert self._loop is not None
        self._loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        if not self._closing:
            self._spawn()
