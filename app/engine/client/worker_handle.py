"""The worker as seen from the API process: a spawned process, two queues and a reader thread."""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
from collections.abc import Callable
from typing import Any

from app.engine.config import EngineConfig
from app.engine.protocol import Shutdown, WorkerFailed

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2


class WorkerProcess:
    """Starts run_worker in a fresh interpreter (spawn: torch and CUDA never see a fork) and
    hands every message it sends to on_message, from a reader thread. on_exit fires once, when
    the process is gone."""

    def __init__(
        self,
        config: EngineConfig,
        model_id: str,
        on_message: Callable[[Any], object],
        on_exit: Callable[[int | None, str | None], object],
    ) -> None:
        ctx = mp.get_context("spawn")
        self._inbox: Any = ctx.Queue()
        self._outbox: Any = ctx.Queue()
        from app.engine.worker.main import run_worker

        self._process = ctx.Process(
            target=run_worker,
            args=(config, model_id, self._inbox, self._outbox),
            name="gpt2-engine-worker",
            daemon=True,
        )
        self._process.start()
        self._on_message, self._on_exit = on_message, on_exit
        self._stopping = False
        self._reader = threading.Thread(target=self._read, name="engine-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def is_alive(self) -> bool:
        return self._process.is_alive()

    def send(self, msg: Any) -> None:
        if self._process.is_alive():
            self._inbox.put(msg)

    def kill(self) -> None:
        self._process.kill()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self.send(Shutdown())
        self._process.join(timeout)
        if self._process.is_alive():
            log.warning("engine worker did not stop in %.0fs; terminating", timeout)
            self._process.terminate()
            self._process.join(5)
        self._reader.join(timeout=2 * POLL_SECONDS + 1)

    def _read(self) -> None:
        error: str | None = None
        while True:
            try:
                msg = self._outbox.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not self._process.is_alive():
                    break
                continue
            except (EOFError, OSError):
                break
            if isinstance(msg, WorkerFailed):
                error = msg.error
            self._on_message(msg)
        self._process.join(1)
        self._on_exit(self._process.exitcode, error)
