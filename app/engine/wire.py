"""The wire between the worker and each API process: a message is one frame, its pickle's
length (4 bytes, big-endian) and then the pickle, on a Unix socket. The messages themselves are
declared in protocol.py; how a StepResult is pickled is set here (below). Stdlib and
protocol.py only, so both processes import it."""

from __future__ import annotations

import copyreg
import pickle
from array import array
from dataclasses import fields
from operator import attrgetter
from typing import Any

from app.engine.protocol import StepResult, StepStats, TokenLogprobs


def frame(msg: object) -> bytes:
    """One message as it crosses a socket: its pickle's length (4 bytes, big-endian), then the
    pickle."""
    payload = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return len(payload).to_bytes(4, "big") + payload


class FrameReader:
    """Turns the bytes read from a socket back into messages, however they were split."""

    __slots__ = ("_have", "_need", "_pending")

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # the start of an incomplete frame
        self._have = 0
        self._need = 0  # bytes the pending frame needs before it can be parsed

    def feed(self, data: bytes) -> list[Any]:
        """Every message completed by `data`, in order (none while a frame is incomplete)."""
        if self._pending:
            self._pending.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._pending)
            self._pending = []
        messages = []
        end = len(data)
        pos = 0
        view = memoryview(data)
        while end - pos >= 4:
            stop = pos + 4 + int.from_bytes(view[pos : pos + 4], "big")
            if stop > end:
                break
            messages.append(pickle.loads(view[pos + 4 : stop]))
            pos = stop
        if pos < end:  # keep the start of the next frame
            tail = data[pos:]
            self._pending = [tail]
            self._have = len(tail)
            self._need = 4 + int.from_bytes(tail[:4], "big") if len(tail) >= 4 else 4
        return messages


# One StepResult crosses the wire every step, so its encoding is a fixed cost of every step on
# both sides: pickle's default for a dataclass (copyreg, a state dict, each array's own reduce)
# took about 19 µs to write and 21 µs to read, whatever the rows; as its arrays' bytes and its
# stats as a tuple, 6 and 8.
_stats_values = attrgetter(*(f.name for f in fields(StepStats)))


def _reduce_step_result(result: StepResult) -> tuple[Any, ...]:
    return (
        step_result,
        (
            result.handles.tobytes(),
            result.tokens.tobytes(),
            result.finish,
            result.scheduled,
            result.cached_tokens,
            result.logprobs,
            result.prompt_logprobs,
            None if result.stats is None else _stats_values(result.stats),
        ),
    )


def step_result(
    handles: bytes,
    tokens: bytes,
    finish: bytes,
    scheduled: tuple[tuple[int, float], ...],
    cached_tokens: tuple[tuple[int, int], ...],
    logprobs: tuple[tuple[int, TokenLogprobs], ...],
    prompt_logprobs: tuple[tuple[int, tuple[TokenLogprobs | None, ...]], ...],
    stats: tuple[Any, ...] | None,
) -> StepResult:
    """A StepResult from its wire form (what unpickling a step's frame calls)."""
    handle_array, token_array = array("q"), array("q")
    handle_array.frombytes(handles)
    token_array.frombytes(tokens)
    return StepResult(
        handle_array,
        token_array,
        finish,
        scheduled,
        cached_tokens,
        logprobs,
        prompt_logprobs,
        None if stats is None else StepStats(*stats),
    )


copyreg.pickle(StepResult, _reduce_step_result)
