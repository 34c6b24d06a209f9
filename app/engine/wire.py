"""The wire between the worker and each API process: a message is one frame, its pickle's
length (4 bytes, big-endian) and then the pickle, on a Unix socket. The messages themselves are
declared in protocol.py. Stdlib only, so both processes import it."""

from __future__ import annotations

import pickle
from typing import Any


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
