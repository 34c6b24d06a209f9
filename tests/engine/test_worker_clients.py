"""The wire and the worker's clients (app/engine/worker/clients.py), over real sockets, with a
stand-in for EngineCore: frames survive any split; with --api-workers each API process's
requests are named apart, each gets only its own rows back (with its own handles), every one
gets the step's stats, and a process that leaves has its requests aborted."""

from __future__ import annotations

import socket
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.engine.protocol import (
    AbortRequest,
    AddRequest,
    ModelInfo,
    SamplingParams,
    Shutdown,
    StepResult,
    StepStats,
    TokenLogprobs,
    WorkerReady,
)
from app.engine.wire import FrameReader, frame
from app.engine.worker.clients import CLIENT_SHIFT, Clients

STATS = StepStats(0.001, 2, 0, 2, 2, 0, 2, 8)
HELLO = WorkerReady(ModelInfo("m", "/m", 100, 64, 0, "float32", "cpu", 4, 8), pid=123)


class FakeCore:
    def __init__(self) -> None:
        self.added: list[AddRequest] = []
        self.aborted: list[str] = []

    def apply(self, msg: AddRequest | AbortRequest) -> None:
        if isinstance(msg, AddRequest):
            self.added.append(msg)
        else:
            self.aborted.append(msg.request_id)

    def abort_request(self, request_id: str) -> bool:
        self.aborted.append(request_id)
        return True


class Peer:
    """One end that speaks frames (an API process, or the owner)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(5)
        self.reader = FrameReader()
        self.inbox: list[Any] = []

    def send(self, msg: object) -> None:
        self.sock.sendall(frame(msg))

    def receive(self) -> Any:
        while not self.inbox:
            data = self.sock.recv(1 << 16)
            assert data, "closed"
            self.inbox += self.reader.feed(data)
        return self.inbox.pop(0)

    def nothing_waiting(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(1)
        except BlockingIOError:
            return not self.inbox
        finally:
            self.sock.settimeout(5)
        return False


def _request(rid: str, handle: int) -> AddRequest:
    return AddRequest(rid, (1, 2, 3), SamplingParams(max_tokens=4), handle)


def _poll_until(clients: Clients, core: FakeCore, done: Any) -> None:
    for _ in range(100):
        if done():
            return
        assert clients.poll(core, 0.05) is not False
    raise AssertionError("the worker did not take the messages")


def test_frames_come_back_whole_however_the_bytes_are_split() -> None:
    messages: list[Any] = [
        _request("a", 1),
        StepResult(array("q", [1, 2]), array("q", [7, -1]), b"\x00\x03", stats=STATS),
        # every field a step can carry (StepResult has its own wire form: wire.py)
        StepResult(
            array("q", [3, 1 << 50, 4]),
            array("q", [50256, 9, -1]),
            b"\x02\x00\x03",
            scheduled=((0, 12.5),),
            cached_tokens=((0, 16),),
            logprobs=((1, TokenLogprobs(9, -0.25, ((9, -0.25), (3, -1.5)), 1)),),
            prompt_logprobs=((0, (None, TokenLogprobs(7, -3.0))),),
            stats=StepStats(0.5, 1, 31, 3, 3, 2, 9, 64, 32, 16, 1, 0.001),
        ),
        StepResult(array("q"), array("q"), b""),  # an idle turn: no rows, no stats
        "x" * 70_000,  # longer than one read
        Shutdown(),
    ]
    data = b"".join(frame(m) for m in messages)
    for size in (1, 3, 4, 5, 9, 1000, 65536, len(data)):
        reader = FrameReader()
        out: list[Any] = []
        for start in range(0, len(data), size):
            out += reader.feed(data[start : start + size])
        assert out == messages, size
        assert [type(m) for m in out] == [type(m) for m in messages]
        steps = [m for m in out if isinstance(m, StepResult)]
        assert all(s.handles.typecode == s.tokens.typecode == "q" for s in steps)


@pytest.fixture
def owner_pair() -> Iterator[tuple[socket.socket, Peer]]:
    mine, theirs = socket.socketpair()
    yield theirs, Peer(mine)
    mine.close()


def test_one_api_process_is_the_owner_and_gets_steps_whole(
    owner_pair: tuple[socket.socket, Peer],
) -> None:
    worker_end, owner = owner_pair
    core = FakeCore()
    clients = Clients(worker_end, owner_is_client=True)
    owner.send(_request("r", 5))
    owner.send(AbortRequest("r"))
    _poll_until(clients, core, lambda: core.aborted)
    assert core.added == [_request("r", 5)] and core.aborted == ["r"]  # as they came
    step = StepResult(array("q", [5]), array("q", [9]), b"\x00", ((0, 1.5),), stats=STATS)
    assert clients.send_step(step, core)
    assert owner.receive() == step
    owner.send(Shutdown())
    assert clients.poll(core, 1.0) is False
    clients.close()


def test_api_processes_are_named_apart_and_get_only_their_rows(
    owner_pair: tuple[socket.socket, Peer], tmp_path: Path
) -> None:
    worker_end, owner = owner_pair
    core = FakeCore()
    clients = Clients(worker_end, owner_is_client=False)
    path = str(tmp_path / "worker.sock")
    clients.listen(path, HELLO)
    peers = []
    for _ in range(2):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        peers.append(Peer(sock))
    _poll_until(clients, core, lambda: clients.num_clients == 2)
    a, b = peers
    assert a.receive() == HELLO and b.receive() == HELLO
    # The same request id and handle from both: the engine sees two requests.
    a.send(_request("same", 1))
    b.send(_request("same", 1))
    b.send(_request("other", 2))
    _poll_until(clients, core, lambda: len(core.added) == 3)
    ids = [r.request_id for r in core.added]
    handles = [r.handle for r in core.added]
    assert len(set(ids)) == 3 and len(set(handles)) == 3
    assert {h & ((1 << CLIENT_SHIFT) - 1) for h in handles} == {1, 2}
    a_same, b_same, b_other = handles
    # A step with rows of both: each gets its own, with its own handles and row numbers.
    lp = TokenLogprobs(40, -0.5)
    step = StepResult(
        array("q", [b_other, a_same, b_same]),
        array("q", [30, 40, 50]),
        b"\x00\x00\x02",  # b's "same" finished (length)
        scheduled=((1, 1.25), (2, 2.5)),
        logprobs=((1, lp),),
        stats=STATS,
    )
    assert clients.send_step(step, core)
    got_a, got_b = a.receive(), b.receive()
    rows = (list(got_a.handles), list(got_a.tokens), got_a.finish)
    assert rows == ([1], [40], b"\x00")
    assert got_a.scheduled == ((0, 1.25),) and got_a.logprobs == ((0, lp),)
    assert (list(got_b.handles), list(got_b.tokens), got_b.finish) == (
        [2, 1],
        [30, 50],
        b"\x00\x02",
    )
    assert got_b.scheduled == ((1, 2.5),) and got_b.logprobs == ()
    assert got_a.stats == got_b.stats == STATS
    # Rows of one only: the other still gets the stats; with no stats, nothing.
    only_a = StepResult(array("q", [a_same]), array("q", [41]), b"\x00", stats=STATS)
    assert clients.send_step(only_a, core)
    assert len(a.receive()) == 1
    stats_only = b.receive()
    assert (len(stats_only), stats_only.stats) == (0, STATS)
    assert clients.send_step(StepResult(array("q", [a_same]), array("q", [42]), b"\x00"), core)
    assert len(a.receive()) == 1 and b.nothing_waiting()
    # An abort names the client's own request.
    a.send(AbortRequest("same"))
    _poll_until(clients, core, lambda: len(core.aborted) == 1)
    assert core.aborted == [ids[0]]
    # b leaves: what it still had running (not the finished one) is aborted.
    b.sock.close()
    _poll_until(clients, core, lambda: clients.num_clients == 1)
    assert core.aborted == [ids[0], ids[2]]
    # The owner's Shutdown stops the worker; its channel is control only here.
    owner.send(_request("ignored", 9))
    owner.send(Shutdown())
    assert clients.poll(core, 1.0) is False
    assert len(core.added) == 3
    clients.close()
    assert not Path(path).exists()
    a.sock.close()
