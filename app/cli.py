"""`gpt2-serve`: run the service (the default), or generate once in-process.

    gpt2-serve --model DIR_OR_ID --host H --port P      # same as `gpt2-serve serve ...`
    gpt2-serve generate --model DIR "Once upon a time"
    gpt2-serve bench --url http://127.0.0.1:8000 --concurrency 1 8 32   # load test (app/bench)

Every serve option is a Settings field, so each flag also comes from GPT2_<NAME> in the
environment (flags win); app/cli_flags.py makes the flags. A start that cannot go on (a taken
port, a missing model, a bad value) ends in one line and an exit status (app/startup_errors.py),
and what can be checked before the model loads is (app/preflight.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import types
from typing import Any

import uvicorn
from pydantic import ValidationError

from app.cli_flags import add_engine_flags, add_settings_flags, settings_from
from app.config import Settings, to_engine_config
from app.preflight import bind_listener, check_model
from app.startup_errors import EXIT_STATUSES, StartupError, describe

log = logging.getLogger("gpt2_serve")
COMMANDS = ("serve", "generate", "bench")
# After the drain deadline, how long uvicorn waits for the answers the engine just ended (an
# error event and [DONE], or a 503) to go out before it cancels what is left.
SHUTDOWN_MARGIN_SECONDS = 2
TOP_EPILOG = """\
each command has its own flags:
  gpt2-serve serve --help      the server's flags: model, engine, server, limits, observability
  gpt2-serve generate --help   the model and engine flags, and the generation's own
  gpt2-serve bench --help      the load generator's flags

Without a command, gpt2-serve runs serve: `gpt2-serve --port 9000` is
`gpt2-serve serve --port 9000`.
"""
SERVE_DESCRIPTION = """\
Run the HTTP service: OpenAI- and TGI-compatible routes, one engine worker process.
Every flag can also be set in the environment as GPT2_<NAME> (the flag wins; an empty
variable counts as unset)."""

# Kept for the callers that build a parser of their own (tests).
_add_settings_flags = add_settings_flags
_settings_from = settings_from


def serve(settings: Settings) -> None:
    from app.main import create_app
    from app.request_log import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    # The worker process inherits the environment: same level and format there (flags too).
    os.environ["GPT2_LOG_LEVEL"] = settings.log_level
    os.environ["GPT2_LOG_FORMAT"] = settings.log_format
    # Before anything is loaded: the port (held from now on), then the model's files.
    listener = bind_listener(settings.host, settings.port)
    try:
        check_model(to_engine_config(settings).model)
        if settings.api_workers > 1:  # a supervisor, a worker and N HTTP processes
            from app.api_workers import serve_api_workers

            code = serve_api_workers(settings, DrainingServer, listener)
            if code:
                raise SystemExit(code)
            return
        app = create_app(settings)
        server = DrainingServer(
            uvicorn_config(app, settings),
            app,
            settings.drain_timeout_seconds,
            address=(settings.host, settings.port),
        )
        try:
            server.run(sockets=[listener])
        except SystemExit:  # uvicorn's, when the lifespan failed: report why, in one line
            if app.state.startup_error is not None:
                raise describe(app.state.startup_error) from app.state.startup_error
            raise
        if server.forced:
            raise SystemExit(1)  # a second signal cut requests short
    finally:
        listener.close()


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    from app.api.http_limits import guarded_h11

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # uvicorn's loggers go through ours (JSON or text, GPT2_LOG_FORMAT)
        log_level=settings.log_level.lower(),
        # Only the margin: the drain has its own deadline (see DrainingServer).
        timeout_graceful_shutdown=SHUTDOWN_MARGIN_SECONDS,
        # h11 with a deadline for request headers (app/api/http_limits.py), never httptools.
        http=guarded_h11(settings.header_timeout_seconds),
        limit_concurrency=settings.max_connections,
    )


class DrainingServer(uvicorn.Server):
    """Drains on the first SIGTERM/SIGINT: readiness turns false and new generation requests get
    503 while the server keeps answering (so load balancers see it), in-flight streams run to
    the end (up to grace_seconds), then it exits. A second signal exits at once.

    One deadline for the whole shutdown, the engine client's: when it passes, wait_drained ends
    every request still in flight (each stream ends itself with an error event and [DONE],
    each waiting non-streamed request gets a 503), and only then is uvicorn asked to exit. It
    gives those last answers SHUTDOWN_MARGIN_SECONDS to go out before cancelling anything; the
    lifespan's shutdown then stops the worker (a bounded wait) without draining again. So the
    process is gone within grace_seconds + SHUTDOWN_MARGIN_SECONDS + the worker's stop
    (STOP_SECONDS, then it is killed).

    Signal handlers run between two bytecodes of whatever the loop is doing: they only set
    flags and hand the rest to the loop (call_soon_threadsafe).

    A failed startup is the CLI's to report, in one line (serve()): uvicorn's own account of it
    (the traceback, "Application startup failed") goes to DEBUG. `address`: the host and port
    of the socket it is given, to log once it listens (uvicorn does not, for given sockets)."""

    def __init__(
        self,
        config: uvicorn.Config,
        app: Any,
        grace_seconds: float,
        *,
        address: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(config)
        self.app, self.grace_seconds, self.address = app, grace_seconds, address
        self.draining = self.forced = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        lifespan = self.lifespan
        loud = getattr(lifespan, "logger", None)
        if loud is not None:
            lifespan.logger = _ErrorsAtDebug(loud, {})
        try:
            await super().startup(sockets)
        finally:
            if loud is not None:
                lifespan.logger = loud
        if self.started and self.address is not None:
            host, port = self.address
            log.info("listening on http://%s:%d", host, port)

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        engine = getattr(self.app.state, "engine", None)
        loop = self._loop
        if engine is None or loop is None or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        if self.draining:  # the second signal: end everything now, exit without waiting
            log.warning("signal %s during the drain: exiting now", sig)
            self.forced = self.should_exit = self.force_exit = True
            loop.call_soon_threadsafe(engine.end_now)
            return
        self.draining = True
        log.info("signal %s: draining for up to %.0fs", sig, self.grace_seconds)
        loop.call_soon_threadsafe(self._drain, engine)

    def _drain(self, engine: Any) -> None:
        engine.begin_drain(self.grace_seconds)
        self._drain_task = asyncio.get_running_loop().create_task(self._exit_when_drained(engine))

    async def _exit_when_drained(self, engine: Any) -> None:
        await engine.wait_drained()  # at the deadline, this ends what is left
        self.should_exit = True


class _ErrorsAtDebug(logging.LoggerAdapter):  # type: ignore[type-arg]
    """uvicorn's lifespan logger while the app starts: errors become DEBUG records."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG if level >= logging.ERROR else level, msg, *args, **kwargs)


def generate(args: argparse.Namespace) -> None:
    from app.engine import SamplingParams
    from app.engine.worker.llm import LLM

    settings = settings_from(args)
    logging.getLogger().setLevel(settings.log_level)  # the text lines main() set up
    check_model(to_engine_config(settings).model)
    try:
        llm = LLM(to_engine_config(settings))
    except Exception as exc:  # the model would not load: one line, as serve says it
        raise describe(exc) from exc
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed_sample
    )
    for out in llm.stream(args.prompt, params):
        sys.stdout.write(out.text)
        sys.stdout.flush()
    sys.stdout.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt2-serve",
        description=__doc__.split("\n")[0],
        epilog=TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, title="commands")
    serve_parser = sub.add_parser(
        "serve",
        help="run the HTTP service (the default): gpt2-serve serve --help",
        description=SERVE_DESCRIPTION,
        epilog=_exit_statuses(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_flags(serve_parser)
    gen = sub.add_parser(
        "generate",
        help="generate once, in-process, and print the text: gpt2-serve generate --help",
        description="Load the model in this process, continue PROMPT and print the text.\n"
        "The model and engine flags are serve's; GPT2_<NAME> variables apply too.",
        epilog=_exit_statuses(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    generation = gen.add_argument_group("generation", "this one generation's prompt and sampling")
    generation.add_argument("prompt", help="the text to continue")
    generation.add_argument(
        "--max-tokens", type=int, default=64, help="tokens to generate at most (default: 64)"
    )
    generation.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="sampling temperature; 0: greedy (default: 0.8)",
    )
    generation.add_argument(
        "--seed-sample",
        type=int,
        default=None,
        help="seed for this generation's sampling (default: unset, the engine's --seed)",
    )
    add_engine_flags(gen)
    sub.add_parser("bench", help="load-test OpenAI-compatible servers: gpt2-serve bench --help")
    return parser


def _exit_statuses() -> str:
    lines = [f"  {int(status)}  {meaning}" for status, meaning in EXIT_STATUSES.items()]
    return "exit status:\n" + "\n".join(lines) + "\n(see docs/operations.md)"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "serve")
    if argv[0] == "bench":  # its own parser: gpt2-serve bench -h
        from app.bench.cli import main as bench

        raise SystemExit(bench(argv[1:]))
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "generate":
            generate(args)
        else:
            serve(settings_from(args))
    except (StartupError, ValidationError) as exc:
        error = describe(exc)
        log.error("%s", error)
        log.debug("why the start failed", exc_info=exc)
        raise SystemExit(int(error.status)) from None


if __name__ == "__main__":
    main()
