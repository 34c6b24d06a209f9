"""What AsyncEngine.stats() returns, for the tests of GET /v1/engine/stats.

The fake engine's stats() is a placeholder; these build the real view (the function
AsyncEngine.stats() calls) over stand-in figures, so the route is tested with what the real
engine hands it, and a key the engine's view gains shows up here.
"""

from __future__ import annotations

from collections import deque

import pytest

from app.engine.client.async_engine import engine_stats
from app.engine.protocol import StepStats
from tests.api.fakes import FakeEngineClient

STEP = StepStats(
    step_seconds=0.004,
    num_decode_tokens=3,
    num_prefill_tokens=17,
    batch_size=4,
    num_running=4,
    num_waiting=1,
    kv_blocks_used=4,
    kv_blocks_total=8,
)


def engine_view(stepped: bool = True) -> tuple[dict[str, object], deque[float]]:
    """The view after a few engine steps (or, stepped=False, before the first), and the
    recent step times it summarizes."""
    recent: deque[float] = deque([0.004, 0.0125, 0.006] if stepped else [], maxlen=50)
    view = engine_stats(
        ready=True,
        draining=False,
        worker_alive=True,
        worker_pid=4242,
        worker_restarts=0,
        in_flight=5,
        queued_prompt_tokens=17,
        last=STEP if stepped else None,
        recent_step_seconds=list(recent),
        drain_rate=2.5,
    )
    return view, recent


def use_engine_view(
    fake: FakeEngineClient, monkeypatch: pytest.MonkeyPatch, stepped: bool = True
) -> dict[str, object]:
    """Make the fake's stats() the real engine's view; returns the view."""
    view, _ = engine_view(stepped)
    monkeypatch.setattr(fake, "stats", lambda: view)
    return view
