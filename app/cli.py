"""`gpt2-serve`: run the service (the default), or generate once in-process.

    gpt2-serve --model DIR_OR_ID --host H --port P      # same as `gpt2-serve serve ...`
    gpt2-serve generate --model DIR "Once upon a time"
    gpt2-serve bench --url http://127.0.0.1:8000 --concurrency 1 8 32   # load test (app/bench)

Every serve option is a Settings field, so each flag also comes from GPT2_<NAME> in the
environment (flags win).
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
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import uvicorn

from app.config import Settings

log = logging.getLogger("gpt2_serve")
COMMANDS = ("serve", "generate", "bench")
# After the drain deadline, how long uvicorn waits for the answers the engine just ended (an
# error event and [DONE], or a 503) to go out before it cancels what is left.
SHUTDOWN_MARGIN_SECONDS = 2


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field (engine options included), its help from the field's
    description, then its environment variable and default."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kinds = [a for a in get_args(field.annotation) if a is not type(None)] or [field.annotation]
        kind = kinds[0]
        origin = get_origin(field.annotation)
        listed = origin in (list, tuple)  # comma-separated or a JSON list, parsed by Settings
        default = field.get_default(call_default_factory=True)
        if listed:
            default = ",".join(str(item) for item in default)
        what = (field.description or name.replace("_", " ")) + (
            ", comma-separated or a JSON list" if listed else ""
        )
        # argparse %-formats help strings.
        help_text = f"{what} (env GPT2_{name.upper()}; default: {default!r})".replace("%", "%%")
        if origin is Literal:
            parser.add_argument(
                flag, dest=name, choices=get_args(field.annotation), default=None, help=help_text
            )
        elif listed:
            parser.add_argument(flag, dest=name, default=None, help=help_text)
        elif kind is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif kind in (int, float, str, Path):
            parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)


def _settings_from(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**given)


def serve(settings: Settings) -> None:
    from app.main import create_app
    from app.request_log import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    # The worker process inherits the environment: same level and format there (flags too).
    os.environ["GPT2_LOG_LEVEL"] = settings.log_level
    os.environ["GPT2_LOG_FORMAT"] = settings.log_format
    if settings.api_workers > 1:  # a supervisor, a worker and N HTTP processes
        from app.api_workers import serve_api_workers

        code = serve_api_workers(settings, DrainingServer)
        if code:
            raise SystemExit(code)
        return
    app = create_app(settings)
    server = DrainingServer(uvicorn_config(app, settings), app, settings.drain_timeout_seconds)
    server.run()
    if server.forced:
        raise SystemExit(1)  # a second signal cut requests short


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
    flags and hand the rest to the loop (call_soon_threadsafe)."""

    def __init__(self, config: uvicorn.Config, app: Any, grace_seconds: float) -> None:
        super().__init__(config)
        self.app, self.grace_seconds = app, grace_seconds
        self.draining = self.forced = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

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


def generate(args: argparse.Namespace) -> None:
    from app.config import to_engine_config
    from app.engine import SamplingParams
    from app.engine.worker.llm import LLM

    llm = LLM(to_engine_config(_settings_from(args)))
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed_sample
    )
    for out in llm.stream(args.prompt, params):
        sys.stdout.write(out.text)
        sys.stdout.flush()
    sys.stdout.write("\n")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "serve")
    if argv[0] == "bench":  # its own parser: gpt2-serve bench -h
        from app.bench.cli import main as bench

        raise SystemExit(bench(argv[1:]))
    parser = argparse.ArgumentParser(prog="gpt2-serve", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_settings_flags(sub.add_parser("serve", help="run the HTTP service (the default)"))
    gen = sub.add_parser("generate", help="generate once, in-process, and print the text")
    _add_settings_flags(gen)
    gen.add_argument("prompt")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--seed-sample", type=int, default=None, help="seed for this generation")
    sub.add_parser("bench", help="load-test OpenAI-compatible servers: gpt2-serve bench -h")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "generate":
        generate(args)
    else:
        serve(_settings_from(args))


if __name__ == "__main__":
    main()
