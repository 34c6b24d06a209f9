"""Pausing a process the tests started (the engine worker), so that what a test checks does not
depend on how fast this machine runs the model.

While the worker is stopped (SIGSTOP) it takes no step: a request cannot finish, run on, or be
aborted before the test has done what it wanted to do first. Commands sent meanwhile wait in the
worker's inbox, in order, and are applied together when it resumes (SIGCONT)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused(pid: int | None) -> Iterator[None]:
    assert pid is not None, "no worker process"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
