"""--api-workers N > 1: N HTTP processes in front of one engine worker (vLLM's
--api-server-count).

    gpt2-serve serve --api-workers N          the supervisor (this module)
    ├── the engine worker                     started, and restarted when it dies, by the
    │                                         supervisor's WorkerHandle; it listens on a Unix
    │                                         socket for the API processes
    └── N API processes                       uvicorn + the app, all accepting on the one
                                              listening socket the supervisor bound

Each API process has its own event loop, tokenizer, output processing and share of the admission
limits (admission.py), and connects to the worker (RemoteWorker); the worker sends each one only
its own requests' rows (app/engine/worker/clients.py). When the worker dies every API process
fails its requests in flight (worker_lost), reports not ready, and connects again once the
supervisor has started a new one.

Metrics: every API process writes to one prometheus_client multiprocess directory, fresh for each
run (app/metrics.py), so /metrics from any of them counts every request once.

Signals: SIGTERM or SIGINT to the supervisor is forwarded (as SIGTERM) to every API process,
each of which drains as one process does (cli.DrainingServer); once all have exited the
supervisor stops the worker and exits (0 when every API process did). A second signal is
forwarded too: the API processes then exit at once. The API processes have their own process
group, so a terminal's Ctrl-C reaches them once, through the supervisor. If an API process
exits by itself, the others are stopped the same way and the supervisor exits with 1; if the
supervisor dies, the worker (its socket pair closes) and the API processes (they watch their
parent) stop too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from typing import Any

from app.config import Settings, to_engine_config
from app.engine.client.remote_worker import ApiProcess
from app.engine.client.worker_handle import WorkerHandle
from app.startup_errors import StartupError, describe

log = logging.getLogger("gpt2_serve")
KILL_AFTER_DRAIN_SECONDS = 15.0  # past the drain timeout, API processes still there are killed
# After an API process's drain (the engine's deadline), what uvicorn still gives open
# connections before it cancels them: the drain already was their time, so only a moment more,
# and the whole shutdown stays within the drain timeout and a few seconds.
AFTER_DRAIN_SECONDS = 3


def serve_api_workers(settings: Settings, server_class: Any, listener: socket.socket) -> int:
    """Run the supervisor until every process has stopped; returns the exit status, or raises
    StartupError when the engine worker could not start (the CLI reports it in one line).
    `server_class`: cli.DrainingServer (the uvicorn server each API process runs); `listener`:
    the socket bound to --host/--port (app/preflight.py), which every API process accepts on."""
    supervisor = Supervisor(settings, server_class)
    code = asyncio.run(supervisor.run(listener))
    if supervisor.startup_error is not None:
        raise supervisor.startup_error
    return code


class Supervisor:
    def __init__(self, settings: Settings, server_class: Any) -> None:
        self.settings = settings
        self.server_class = server_class
        self.startup_error: StartupError | None = None
        self.api: list[Any] = []  # multiprocessing.Process
        self.exit_codes: dict[int, int | None] = {}
        self.stopping = False
        self.failed = False
        self.signals = 0
        self._all_exited = asyncio.Event()
        self._api_failed = asyncio.Event()

    async def run(self, listener: socket.socket) -> int:
        listener.set_inheritable(True)
        run_dir = tempfile.mkdtemp(prefix="gpt2-serve-")
        try:
            return await self._run(listener, run_dir)
        finally:
            listener.close()
            shutil.rmtree(run_dir, ignore_errors=True)

    async def _run(self, listener: socket.socket, run_dir: str) -> int:
        settings, loop = self.settings, asyncio.get_running_loop()
        address = os.path.join(run_dir, "worker.sock")
        metrics_dir = os.path.join(run_dir, "metrics")
        os.mkdir(metrics_dir)
        # Read by prometheus_client when each API process imports it.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        config = to_engine_config(settings)
        worker = WorkerHandle(
            config, settings.model_name, lambda _: None, self._worker_lost, listen=address
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signal)
        starting = asyncio.ensure_future(worker.start())  # the API processes start meanwhile
        self._spawn_api(listener, address)
        port = listener.getsockname()[1]
        listener.close()  # the API processes hold it now
        log.info(
            "serving on http://%s:%d with %d API processes (pids %s) and one engine worker",
            settings.host,
            port,
            len(self.api),
            ", ".join(str(p.pid) for p in self.api),
        )
        failed = asyncio.ensure_future(self._api_failed.wait())
        await asyncio.wait({starting, failed}, return_when=asyncio.FIRST_COMPLETED)
        failed.cancel()
        if starting.done() and (failure := starting.exception()) is not None:
            self.startup_error = describe(failure)  # reported by the CLI, in one line
            self._kill_api(expected=True)
            await self._all_exited.wait()
            await worker.stop()
            return int(self.startup_error.status)
        await self._all_exited.wait()
        starting.cancel()
        await worker.stop()
        codes = sorted(set(self.exit_codes.values()), key=str)
        log.info("API processes exited (%s); engine worker stopped", codes)
        return 1 if self.failed or any(self.exit_codes.values()) else 0

    def _spawn_api(self, listener: socket.socket, address: str) -> None:
        ctx = mp.get_context("spawn")
        loop = asyncio.get_running_loop()
        count = self.settings.api_workers
        for index in range(count):
            role = ApiProcess(index=index, count=count, worker_address=address)
            process = ctx.Process(
                target=run_api_process,
                args=(self.settings, listener, role, os.getpid(), self.server_class),
                name=f"gpt2-api-{index}",
                daemon=True,
            )
            process.start()
            self.api.append(process)
            loop.add_reader(process.sentinel, self._api_exited, process)

    def _api_exited(self, process: Any) -> None:
        asyncio.get_running_loop().remove_reader(process.sentinel)
        process.join()
        self.exit_codes[process.pid] = process.exitcode
        if not self.stopping:
            code = process.exitcode
            log.error("API process %s exited (code %s): stopping the server", process.pid, code)
            self.failed = True
            self._api_failed.set()
            self._stop_api()
        if len(self.exit_codes) == len(self.api):
            self._all_exited.set()

    def _signal(self) -> None:
        self.signals += 1
        log.info("signal: %s the API processes", "draining" if self.signals == 1 else "stopping")
        self._stop_api()

    def _stop_api(self) -> None:
        """SIGTERM to every API process still running: the first drains, a second ends it."""
        if not self.stopping:
            self.stopping = True
            grace = self.settings.drain_timeout_seconds + KILL_AFTER_DRAIN_SECONDS
            asyncio.get_running_loop().call_later(grace, self._kill_api)
        for process in self.api:
            if process.pid not in self.exit_codes:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    def _kill_api(self, *, expected: bool = False) -> None:
        """SIGKILL to every API process still running: past the drain's grace, or (expected)
        because the worker never started and they have nothing to serve."""
        self.stopping = True
        for process in self.api:
            if process.pid not in self.exit_codes:
                log.log(
                    logging.DEBUG if expected else logging.WARNING,
                    "API process %s still running: killing it",
                    process.pid,
                )
                process.kill()

    def _worker_lost(self, exitcode: int | None, error: str | None) -> None:
        log.error("engine worker exited (code %s, %s); restarting it", exitcode, error)


def run_api_process(
    settings: Settings,
    listener: socket.socket,
    role: ApiProcess,
    supervisor: int,
    server_class: Any,
) -> None:
    """One HTTP process: the app on uvicorn, accepting on the shared socket, its engine
    connected to the supervisor's worker."""
    import uvicorn

    from app.main import create_app
    from app.request_log import configure_logging

    os.setpgid(0, 0)  # signals come through the supervisor (see the module's docstring)
    configure_logging(settings.log_format, settings.log_level)
    _watch_parent(supervisor)
    app = create_app(settings, api_process=role)
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=AFTER_DRAIN_SECONDS,
    )
    server_class(config, app, settings.drain_timeout_seconds).run(sockets=[listener])


def _watch_parent(supervisor: int) -> None:
    """Drain and exit, as on SIGTERM, if the supervisor goes away."""

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-supervisor", daemon=True).start()
