"""The worker's clients: where commands come from and where each step's rows go.

The worker always has an owner: the process that spawned it, on a socket pair made at spawn. It
sends Shutdown there, and hears WorkerReady / WorkerFailed; its end closing means it is gone.

- One API process (the default): the owner is the only client. Its requests and aborts are
  applied as they are, and every StepResult goes to it whole: no renaming, no splitting.
- `--api-workers N`: the owner is the supervisor, which sends no requests. The worker listens on
  a Unix socket; each API process connects (and reconnects after a restart) and is one client,
  greeted with WorkerReady. A client's request ids and handles are its own, so the engine names
  them by client: request id "<id>@<client>", handle (client << 48) | handle. Each step's rows
  are split by client and each client gets only its own (with its own handles back) plus the
  step's StepStats; a client that goes away has its requests aborted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
from array import array
from typing import Any, Protocol

import numpy as np

from app.engine.protocol import (
    AbortRequest,
    AddRequest,
    Shutdown,
    StepResult,
    WorkerReady,
)
from app.engine.wire import FrameReader, frame

log = logging.getLogger(__name__)

CLIENT_SHIFT = 48  # a client's handles must stay below 2**48
HANDLE_MASK = (1 << CLIENT_SHIFT) - 1
MAX_CLIENTS = 1 << 14  # client numbers wrap (skipping live ones); 0 is the owner
READ_SIZE = 1 << 18
_OWNER = object()
_LISTENER = object()


class Core(Protocol):
    """What the clients need of EngineCore."""

    def apply(self, msg: AddRequest | AbortRequest) -> None: ...

    def abort_request(self, request_id: str) -> bool: ...


class _Client:
    __slots__ = ("index", "live", "reader", "sock", "suffix")

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.reader = FrameReader()
        self.suffix = f"@{index}"
        self.live: dict[int, str] = {}  # the client's handle -> the engine's request id


class Clients:
    """The owner's channel, and (when listening) the API processes' connections."""

    def __init__(self, owner: socket.socket, owner_is_client: bool) -> None:
        self._owner = owner
        self._owner_reader = FrameReader()
        self._owner_is_client = owner_is_client
        self._selector = selectors.DefaultSelector()
        self._selector.register(owner, selectors.EVENT_READ, _OWNER)
        self._listener: socket.socket | None = None
        self._path: str | None = None
        self._hello: WorkerReady | None = None
        self._clients: dict[int, _Client] = {}
        self._next_index = 1

    @property
    def num_clients(self) -> int:
        return len(self._clients)

    def send_owner(self, msg: object) -> bool:
        """False when the owner is gone."""
        try:
            self._owner.sendall(frame(msg))
        except OSError:
            return False
        return True

    def listen(self, path: str, hello: WorkerReady) -> None:
        """Accept API processes on a Unix socket at `path`; each is greeted with `hello`."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a worker that died
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        self._listener, self._path, self._hello = listener, path, hello
        self._selector.register(listener, selectors.EVENT_READ, _LISTENER)

    def close(self) -> None:
        for client in list(self._clients.values()):
            client.sock.close()
        self._clients.clear()
        if self._listener is not None:
            self._listener.close()
            if self._path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._path)
        self._selector.close()

    # ---- in -----------------------------------------------------------------------------------

    def poll(self, core: Core, timeout: float | None) -> bool | None:
        """Apply every command that has arrived, waiting up to `timeout` seconds (0: don't wait)
        for the first. Returns False on Shutdown or when the owner is gone, None when nothing
        came in the time, True otherwise."""
        events = self._selector.select(timeout)
        if not events:
            return None
        for key, _ in events:
            if key.data is _OWNER:
                if not self._from_owner(core):
                    return False
            elif key.data is _LISTENER:
                self._accept()
            else:
                self._from_client(key.data, core)
        return True

    def _from_owner(self, core: Core) -> bool:
        try:
            data = self._owner.recv(READ_SIZE)
        except OSError:
            return False
        if not data:
            return False
        for msg in self._owner_reader.feed(data):
            if isinstance(msg, Shutdown):
                return False
            if self._owner_is_client and isinstance(msg, AddRequest | AbortRequest):
                core.apply(msg)
        return True

    def _accept(self) -> None:
        assert self._listener is not None and self._hello is not None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        index = self._next_index
        while index in self._clients:
            index = index % (MAX_CLIENTS - 1) + 1
        self._next_index = index % (MAX_CLIENTS - 1) + 1
        client = _Client(index, sock)
        try:
            sock.sendall(frame(self._hello))
        except OSError:
            sock.close()
            return
        self._clients[index] = client
        self._selector.register(sock, selectors.EVENT_READ, client)
        log.info("API process connected (client %d, %d now)", index, len(self._clients))

    def _from_client(self, client: _Client, core: Core) -> None:
        try:
            data = client.sock.recv(READ_SIZE)
        except OSError:
            data = b""
        if not data:
            self._drop(client, core)
            return
        for msg in client.reader.feed(data):
            if isinstance(msg, AddRequest):
                if not 0 <= msg.handle <= HANDLE_MASK or msg.handle in client.live:
                    log.error("client %d: handle %d refused", client.index, msg.handle)
                    continue
                request_id = msg.request_id + client.suffix
                client.live[msg.handle] = request_id
                handle = (client.index << CLIENT_SHIFT) | msg.handle
                core.apply(AddRequest(request_id, msg.prompt_ids, msg.params, handle))
            elif isinstance(msg, AbortRequest):
                core.abort_request(msg.request_id + client.suffix)

    def _drop(self, client: _Client, core: Core) -> None:
        """The client went away: forget it and abort what it had running."""
        self._selector.unregister(client.sock)
        client.sock.close()
        del self._clients[client.index]
        for request_id in client.live.values():
            core.abort_request(request_id)
        log.info(
            "API process left (client %d, %d requests aborted, %d clients now)",
            client.index,
            len(client.live),
            len(self._clients),
        )

    # ---- out ----------------------------------------------------------------------------------

    def send_step(self, result: StepResult, core: Core) -> bool:
        """Each client its rows of the step (and the step's stats). False when the owner, as
        the one client, is gone."""
        if self._owner_is_client:
            return self.send_owner(result)
        if not self._clients:
            return True
        handles = np.frombuffer(result.handles, dtype=np.int64)
        owners = handles >> CLIENT_SHIFT
        for index, client in list(self._clients.items()):
            rows = np.flatnonzero(owners == index)
            if len(rows):
                msg = _part(result, handles, rows, client.live)
            elif result.stats is not None:
                msg = StepResult(array("q"), array("q"), b"", stats=result.stats)
            else:
                continue
            try:
                client.sock.sendall(frame(msg))
            except OSError:
                self._drop(client, core)
        return True


def _part(
    result: StepResult,
    handles: np.ndarray[Any, Any],
    rows: np.ndarray[Any, Any],
    live: dict[int, str],
) -> StepResult:
    """The rows of one client, with its own handles; finished requests leave `live`."""
    mine = handles[rows] & HANDLE_MASK
    out_handles: array[int] = array("q", mine.tobytes())
    out_tokens: array[int] = array(
        "q", np.frombuffer(result.tokens, dtype=np.int64)[rows].tobytes()
    )
    finish = np.frombuffer(result.finish, dtype=np.uint8)[rows]
    for i in np.flatnonzero(finish).tolist():
        live.pop(int(mine[i]), None)
    extras: dict[str, Any] = {}
    if result.scheduled or result.cached_tokens or result.logprobs or result.prompt_logprobs:
        new_row = {row: i for i, row in enumerate(rows.tolist())}
        for name in ("scheduled", "cached_tokens", "logprobs", "prompt_logprobs"):
            entries: tuple[tuple[int, Any], ...] = getattr(result, name)
            extras[name] = tuple((new_row[r], v) for r, v in entries if r in new_row)
    return StepResult(out_handles, out_tokens, finish.tobytes(), stats=result.stats, **extras)
