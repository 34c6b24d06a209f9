"""What the CLI checks before it loads anything: the listening address, and the model's files.

Loading a model takes seconds to minutes (a hub download, the worker's torch import and warm-up);
a taken port or a mistyped path must not cost that wait before the user hears about it. The
checks raise StartupError (one line, an exit status: app/startup_errors.py).
"""

from __future__ import annotations

import errno
import socket

from app.hub import ModelNotFoundError, check_checkpoint, looks_like_path, resolve_model_dir
from app.startup_errors import ExitStatus, StartupError

BACKLOG = 2048  # uvicorn's default


def bind_listener(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening now, before the model loads: a taken port is
    known at once, and the port is ours while the model loads (uvicorn, or --api-workers'
    processes, accept on this very socket). Connections made meanwhile wait in the backlog and
    are answered once the server is up, as with gunicorn, rather than refused."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {host}:{port}: unknown host {host!r} ({exc.strerror}); "
            "set --host / GPT2_HOST to an address of this machine (0.0.0.0: all of them)",
            ExitStatus.ADDRESS,
        ) from exc
    sock = socket.socket(family, kind, proto)
    # As uvicorn does: a restart may bind while the last run's connections are in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        # Listening at once, not only bound: two bound sockets may share a port (SO_REUSEADDR)
        # until one listens, and a server that found out only then would have loaded for nothing.
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise address_error(host, port, exc) from exc
    return sock


def address_error(host: str, port: int, exc: OSError) -> StartupError:
    """Why the server cannot listen on host:port, and what to do about it."""
    if exc.errno == errno.EADDRINUSE:
        message = (
            f"port {port} is already in use on {host} (another gpt2-serve?): stop that "
            f"process, or choose another port with --port N or GPT2_PORT=N"
        )
    elif exc.errno == errno.EACCES:
        message = (
            f"not permitted to listen on {host}:{port} (ports below 1024 need privileges): "
            "choose another port with --port N or GPT2_PORT=N"
        )
    else:
        message = (
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host / GPT2_HOST "
            "and --port / GPT2_PORT"
        )
    return StartupError(message, ExitStatus.ADDRESS)


def check_model(model: str) -> None:
    """The model's directory exists (or the hub id resolves: fetched, or in the local cache)
    and holds a GPT-2 checkpoint: config.json, the weights and the tokenizer files."""
    try:
        model_dir = resolve_model_dir(model)
        check_checkpoint(model_dir, None if looks_like_path(model) else model)
    except ModelNotFoundError as exc:
        raise StartupError(str(exc), ExitStatus.MODEL) from exc
