"""When the worker dies: the restart backoff grows with crashes in a row and starts over once a
worker has served stably (STABLE_SECONDS), and the dead worker's state leaves the stats. Driven
through the callbacks with a fake clock and loop: no process is spawned."""

from __future__ import annotations

from array import array
from typing import Any

from app.engine.client import worker_handle
from app.engine.client.worker_handle import WorkerHandle
from app.engine.config import EngineConfig
from app.engine.protocol import ModelInfo, WorkerReady

STABLE_SECONDS = getattr(worker_handle, "STABLE_SECONDS", 60.0)
INFO = ModelInfo("m", "/m", 10, 32, 9, "float32", "cpu", 1, 1)


class _Loop:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def call_later(self, delay: float, callback: Any) -> None:
        self.delays.append(delay)


def test_backoff_resets_after_a_stable_run() -> None:
    lost: list[int | None] = []
    handle = WorkerHandle(EngineConfig(model="m"), "m", lambda m: None, lambda c, e: lost.append(c))
    loop, now = _Loop(), [0.0]
    handle._loop = loop  # type: ignore[assignment]
    handle._clock = lambda: now[0]

    def serve_then_die(seconds: float) -> None:
        handle._dispatch(WorkerReady(INFO))
        now[0] += seconds
        handle._on_exit(-9, None)

    for _ in range(5):  # crashes in a row: the backoff grows, then stays at its largest
        serve_then_die(1.0)
    assert loop.delays == [*worker_handle.RESTART_BACKOFF_SECONDS, 10.0]
    serve_then_die(STABLE_SECONDS + 1)  # served stably before dying: start over
    serve_then_die(1.0)
    assert loop.delays[-2:] == [1.0, 2.0]
    assert handle.restarts == 7 and len(lost) == 7


def test_a_lost_worker_takes_its_batch_and_kv_with_it(tiny_model_dir: Any) -> None:
    """/v1/engine/stats after a crash: the dead worker's last step (8 running, 7 waiting, 8 KV
    slots) no longer shows; the new worker reports its own from its first step."""
    from app.engine.client.async_engine import AsyncEngine
    from app.engine.protocol import StepResult, StepStats

    engine = AsyncEngine(EngineConfig(model=str(tiny_model_dir), device="cpu"))
    stats = StepStats(0.01, 8, 0, 8, 8, 7, 8, 8)
    engine._on_message(StepResult(array("q"), array("q"), b"", stats=stats))
    assert engine.stats()["num_running"] == 8
    engine._on_worker_lost(-9, None)
    stats = engine.stats()
    assert (stats["num_running"], stats["num_waiting"], stats["kv_blocks_used"]) == (0, 0, 0)
