"""Pausing a process the tests started (the engine worker), so that what a test checks does not
depend on how fast this machine runs the model.

While the worker is stopped (SIGSTOP) it takes no step: a request cannot finish, run on, or be
aborted before the test has done what it wanted to do first. Commands sent meanwhile wait in the
worker's inbox, in order, and are applied when it resumes (SIGCONT)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Pause:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        os.kill(pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        if self.stopped:
            with contextlib.suppress(ProcessLookupError):  # killed meanwhile: nothing to resume
                os.kill(self.pid, signal.SIGCONT)
            self.stopped = False


@contextmanager
def paused(pid: int | None) -> Iterator[Pause]:
    """The process stopped for the block (or until .resume()), resumed however it ends."""
    assert pid is not None, "no worker process"
    pause = Pause(pid)
    try:
        yield pause
    finally:
        pause.resume()
