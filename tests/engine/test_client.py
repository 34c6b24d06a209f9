"""AsyncEngine over a real worker process: streaming, stop strings, abort, backpressure,
deadlines, a killed worker, and drain.

What the worker did is read from its own reports (every StepResult row it sends, the aborted
ones included), and where timing would decide the outcome (a deadline, a full queue, an abort
racing the end of a generation) the worker is paused (tests/processes.py), so no test depends on
the speed of this machine."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import sys
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app.engine import EngineConfig, SamplingParams
from app.engine.client.async_engine import AsyncEngine
from app.engine.errors import (
    EngineDeadError,
    EngineNotReadyError,
    InvalidRequestError,
    OverloadedError,
)
from app.engine.protocol import (
    FINISH_CODES,
    FinishReason,
    GenerationDelta,
    RequestRecord,
    StepResult,
)
from tests.processes import paused
from tests.stops import spanning_stop

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerEnd:
    finish_reason: FinishReason | None
    num_output_tokens: int  # the tokens the worker reported for the request


class Harness:
    """One event loop and one client (worker process) shared by a module's tests."""

    def __init__(self, client: AsyncEngine) -> None:
        self.records: list[RequestRecord] = []
        self.worker_ends: dict[str, WorkerEnd] = {}  # the worker's last word on each request
        self.loop = asyncio.new_event_loop()
        self.client = client
        ids: dict[int, str] = {}
        tokens: dict[int, int] = {}
        add, process = client.outputs.add, client.outputs.process

        def record_add(rid: str, handle: int, *args: Any) -> Any:
            ids[handle] = rid
            return add(rid, handle, *args)

        def record_and_process(step: StepResult) -> None:
            for handle, token, code in zip(step.handles, step.tokens, step.finish, strict=True):
                tokens[handle] = tokens.get(handle, 0) + (token >= 0)
                if code:
                    self.worker_ends[ids[handle]] = WorkerEnd(FINISH_CODES[code], tokens[handle])
            process(step)

        client.outputs.add = record_add  # type: ignore[method-assign]
        client.outputs.process = record_and_process  # type: ignore[method-assign]
        self.run(client.start())

    def worker_end(self, rid: str) -> WorkerEnd | None:
        """The worker's last word on a request: how it finished it, if it said."""
        return self.worker_ends.get(rid)

    @property
    def worker_pid(self) -> int | None:
        return self.client.worker.pid

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    async def collect(
        self, prompt: str | list[int], params: SamplingParams, rid: str, **kw: Any
    ) -> list[GenerationDelta]:
        ids = await self.client.encode(prompt) if isinstance(prompt, str) else prompt
        params = dataclasses.replace(params, **kw)  # stop strings, deadline
        return [d async for d in self.client.generate(ids, params, request_id=rid)]

    async def until(self, predicate: Any, timeout: float = 30) -> None:
        """Wait for a condition the worker reports asynchronously (bounded, not a fixed sleep)."""
        deadline = self.loop.time() + timeout
        while not predicate():
            assert self.loop.time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def h(tiny_model_dir: Path) -> Iterator[Harness]:
    config = EngineConfig(model=str(tiny_model_dir), device="cpu", max_num_seqs=2)
    records: list[RequestRecord] = []
    harness = Harness(AsyncEngine(config, max_queued_requests=1, request_sink=records.append))
    harness.records = records
    yield harness
    harness.run(harness.client.shutdown(5))
    harness.loop.close()


GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def test_api_process_does_not_import_torch_for_the_client() -> None:
    import subprocess

    code = "import sys, app.engine.client.async_engine; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stream_text_equals_decode_of_tokens(h: Harness) -> None:
    deltas = h.run(h.collect("Emoji 😀 and 日本語:", GREEDY, "s1"))
    ids = [t for d in deltas for t in d.token_ids]
    assert len(ids) == 24 and deltas[-1].finish_reason == "length"
    assert "".join(d.text for d in deltas) == h.client.decode(ids)
    assert all(d.finish_reason is None for d in deltas[:-1])
    t = deltas[-1].timings
    assert t is not None and 0 <= t.queue <= t.time_to_first_token <= t.total
    assert t.max_inter_token >= t.mean_inter_token > 0
    (record,) = [r for r in h.records if r.request_id == "s1"]
    assert (record.outcome, record.num_output_tokens) == ("length", 24)
    assert len(record.inter_token_gaps) == 23 and max(record.inter_token_gaps) == t.max_inter_token
    assert record.prefill_seconds is not None and record.prefill_seconds <= t.time_to_first_token


def test_stop_string_ends_the_request(h: Harness) -> None:
    free = h.run(h.collect("Once upon", GREEDY, "s2"))
    full = "".join(d.text for d in free)
    stop, at = spanning_stop([d.text for d in free])  # starts a token before it ends
    deltas = h.run(h.collect("Once upon", GREEDY, "s3", stop=(stop,)))
    assert "".join(d.text for d in deltas) == full[:at]  # no piece of it was streamed
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_reason == stop
    # The worker was told to stop there, not left to run to max_tokens.
    h.run(h.until(lambda: h.worker_end("s3") is not None))
    end = h.worker_end("s3")
    assert end is not None and end.finish_reason is FinishReason.ABORT


def test_leaving_early_aborts_the_request_in_the_worker(h: Harness) -> None:
    async def leave_after_two() -> None:
        ids = await h.client.encode("abort me")
        agen = h.client.generate(
            ids, SamplingParams(max_tokens=500, ignore_eos=True), request_id="s4"
        )
        seen = 0
        async for _ in agen:
            seen += 1
            if seen == 2:
                break
        await agen.aclose()

    h.run(leave_after_two())
    assert h.client.num_in_flight == 0
    assert [r.outcome for r in h.records if r.request_id == "s4"] == ["disconnected"]
    # The worker's own record: it aborted the request (never finished it: "length" after 500).
    h.run(h.until(lambda: h.worker_end("s4") is not None))
    end = h.worker_end("s4")
    assert end is not None and end.finish_reason is FinishReason.ABORT
    assert end.num_output_tokens < 500


def test_add_request_delivers_into_the_sink_and_leave_aborts(h: Harness) -> None:
    """add_request: the deltas generate() streams, delivered by calling the sink (no task of
    the caller's); leave() aborts a request still running, in the worker too."""

    Item = GenerationDelta | BaseException

    async def scenario() -> tuple[list[Item], list[Item]]:
        ids = await h.client.encode("Once upon")
        whole: list[Item] = []
        part: list[Item] = []
        ended, two = asyncio.Event(), asyncio.Event()

        def into_whole(item: Item) -> None:
            whole.append(item)
            if isinstance(item, BaseException) or item.finished:
                ended.set()

        def into_part(item: Item) -> None:
            part.append(item)
            if len(part) == 2:
                two.set()

        leave = h.client.add_request(ids, GREEDY, request_id="q1", sink=into_whole)
        long = SamplingParams(max_tokens=500, ignore_eos=True)
        leave_early = h.client.add_request(ids, long, request_id="q2", sink=into_part)
        await ended.wait()
        leave()  # after the end: nothing happens
        await two.wait()
        leave_early()
        leave_early()  # again: nothing more
        return whole, part

    whole, part = h.run(scenario())
    streamed = h.run(h.collect("Once upon", GREEDY, "q0"))
    assert [getattr(d, "token_ids", d) for d in whole] == [d.token_ids for d in streamed]
    assert all(isinstance(d, GenerationDelta) and not d.finished for d in part)
    assert [r.outcome for r in h.records if r.request_id in ("q1", "q2")] == [
        "length",
        "disconnected",
    ]
    assert h.client.num_in_flight == 0
    h.run(h.until(lambda: h.worker_end("q2") is not None))
    end = h.worker_end("q2")
    assert end is not None and end.finish_reason is FinishReason.ABORT
    assert end.num_output_tokens < 500


def test_full_queue_gets_overloaded_with_retry_after(h: Harness) -> None:
    """The worker is paused, so the three requests stay in flight (2 running places + 1
    queued) for as long as the test needs them to."""

    async def scenario() -> OverloadedError:
        long = SamplingParams(max_tokens=900, ignore_eos=True)
        with paused(h.worker_pid):
            tasks = [asyncio.ensure_future(h.collect([1, 2], long, f"o{i}")) for i in range(3)]
            await h.until(lambda: h.client.num_in_flight == 3)
            try:
                await h.client.generate([3], long, request_id="o-extra").__anext__()
            except OverloadedError as exc:
                return exc
            finally:
                for t in tasks:  # cancelling a consumer aborts its request
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        raise AssertionError("a 4th request should not fit 2 running + 1 queued")

    err = h.run(scenario())
    assert 1 <= err.retry_after <= 60
    assert str(err).startswith("server overloaded: 3 requests in flight, the limit is 3")
    assert h.client.num_in_flight == 0 and h.client.admission.in_flight == 0
    # Each request was aborted in the worker (it never ran one to its 900 tokens).
    h.run(h.until(lambda: all(h.worker_end(f"o{i}") is not None for i in range(3))))
    for i in range(3):
        end = h.worker_end(f"o{i}")
        assert end is not None and end.finish_reason is FinishReason.ABORT
        assert end.num_output_tokens < 900
    assert h.worker_end("o-extra") is None  # refused: never sent


def test_deadline_ends_with_timeout_and_the_worker_drops_the_request(h: Harness) -> None:
    """With the worker paused, the deadline passes before any token: the request ends with
    "timeout" whatever the speed of the machine, and the abort it sends reaches the worker."""

    async def scenario() -> list[GenerationDelta]:
        with paused(h.worker_pid):
            return await h.collect(
                [5, 6], SamplingParams(max_tokens=1000, ignore_eos=True), "t1", timeout=0.2
            )

    deltas = h.run(scenario())
    assert [(d.text, d.token_ids, d.finish_reason) for d in deltas] == [("", (), "timeout")]
    assert [r.outcome for r in h.records if r.request_id == "t1"] == ["timeout"]
    h.run(h.until(lambda: h.worker_end("t1") is not None))
    end = h.worker_end("t1")
    assert end is not None and end.finish_reason is FinishReason.ABORT
    assert end.num_output_tokens < 1000
    h.run(h.until(lambda: h.client.stats()["kv_blocks_used"] == 0))


def test_invalid_request_raises_before_any_delta(h: Harness) -> None:
    with pytest.raises(InvalidRequestError) as err:
        h.run(h.collect([1] * 1020, SamplingParams(max_tokens=10), "bad"))
    assert err.value.field == "max_tokens"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_killed_worker_fails_in_flight_then_recovers(h: Harness) -> None:
    fds: list[int] = []

    async def scenario() -> None:
        agen = h.client.generate(
            [7], SamplingParams(max_tokens=1000, ignore_eos=True), request_id="k1"
        )
        await agen.__anext__()
        fds.append(_open_fds())
        h.client.worker.kill()
        with pytest.raises(EngineDeadError):
            async for _ in agen:
                pass
        assert not h.client.is_ready
        with pytest.raises(EngineNotReadyError):
            await h.client.generate([1], GREEDY, request_id="k2").__anext__()
        await h.until(lambda: h.client.is_ready, timeout=60)
        fds.append(_open_fds())

    gc.disable()  # what the old worker held is closed when it exits, not by a collection
    try:
        h.run(scenario(), timeout=90)
    finally:
        gc.enable()
    assert h.client.worker_restarts == 1
    assert fds[1] == fds[0], fds  # the new worker's in place of the old one's, no more
    assert [r.outcome for r in h.records if r.request_id == "k1"] == ["worker_lost"]
    deltas = h.run(h.collect("back again", GREEDY, "k3"))
    assert deltas[-1].finish_reason == "length"


def test_drain_refuses_new_work_and_lets_running_finish(tiny_model_dir: Path) -> None:
    harness = Harness(AsyncEngine(EngineConfig(model=str(tiny_model_dir), device="cpu")))
    client = harness.client

    async def scenario() -> list[GenerationDelta]:
        running = asyncio.ensure_future(harness.collect([1, 2, 3], GREEDY, "d1"))
        await asyncio.sleep(0)  # let it be admitted
        client.begin_drain(5)
        assert not client.is_ready
        with pytest.raises(EngineNotReadyError):
            await client.generate([1], GREEDY, request_id="d2").__anext__()
        deltas = await running
        await client.shutdown(5)
        return deltas

    deltas = harness.run(scenario())
    assert deltas[-1].finish_reason == "length"
    assert not client.is_worker_alive
    harness.loop.close()
