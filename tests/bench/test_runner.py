"""The runner and the streaming client against a fake OpenAI server with known delays.

Under virtual time (tests/bench/virtual_time.py): the fake's delays and the runner's
measurements read one clock that only moves from timer to timer, so every latency, gap and
schedule is checked exactly, on any machine, and the hangs and timeouts cost no real time."""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
from pathlib import Path

import httpx
import pytest

from app.bench.client import completion_payload, stream_completion
from app.bench.runner import (
    Budget,
    LoadPoint,
    RunSettings,
    Target,
    TargetResult,
    open_loop,
    poisson_gaps,
    run_target,
)
from app.bench.workload import LengthDist, RequestSpec, Workload
from tests.bench.fake_openai import FakeOpenAI
from tests.bench.virtual_time import VirtualClock
from tests.e2e.server import free_port

WORKLOAD = Workload(output=LengthDist.fixed(8), prompt=LengthDist.fixed(4), seed=1)
TARGET = Target("fake", "http://fake.test")


def _run(
    clock: VirtualClock,
    fake: FakeOpenAI,
    points: list[LoadPoint] | None = None,
    workload: Workload = WORKLOAD,
    **settings: object,
) -> TargetResult:
    options: dict[str, object] = {"num_requests": 4, "warmup": 0, "progress": False}
    options.update(settings)
    return clock.run(
        run_target(
            TARGET,
            points or [LoadPoint("concurrency", 2)],
            workload,
            RunSettings(**options),  # type: ignore[arg-type]
            transport=fake.transport(),
        )
    )


def test_poisson_gaps_have_the_right_mean() -> None:
    gaps = list(itertools.islice(poisson_gaps(4.0, random.Random(7)), 20000))
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.05)  # exponential: sd == mean
    with pytest.raises(ValueError):
        next(poisson_gaps(0, random.Random(0)))


def test_ttft_and_inter_token_gaps_are_measured(clock: VirtualClock) -> None:
    fake = FakeOpenAI(ttft=0.15, gap=0.05)
    out = _run(clock, fake)
    (point,) = out.points
    assert out.model == "fake-gpt2"
    assert [b["model"] for b in fake.bodies] == ["fake-gpt2"] * 4
    assert all(b["stream"] and b["stream_options"] == {"include_usage": True} for b in fake.bodies)
    s = point.stats
    assert (s.completed, s.failed, s.output_tokens) == (4, 0, 32)
    assert s.mean_prompt_tokens == 7  # what the server's usage said, not what was asked
    for r in point.results:
        assert len(r.token_times) == 8  # the empty finish chunk is not a token
        assert r.ttft == pytest.approx(0.15, abs=1e-9)
        assert r.gaps == pytest.approx([0.05] * 7, abs=1e-9)
        assert r.latency == pytest.approx(0.15 + 7 * 0.05, abs=1e-9)
    assert len(s.itl_samples) == 4 * 7
    assert s.ttft.p50 == pytest.approx(0.15) and s.itl.p50 == pytest.approx(0.05)
    # 4 requests, 2 at a time, 0.5 s each: the run took exactly two rounds
    assert clock.now == pytest.approx(2 * (0.15 + 7 * 0.05))


def test_warmup_requests_are_sent_but_not_counted(clock: VirtualClock) -> None:
    fake = FakeOpenAI()
    out = _run(clock, fake, num_requests=3, warmup=2)
    assert len(fake.bodies) == 5
    assert len(out.points[0].results) == 3
    assert out.warmup_errors == 0
    warm_prompts = {b["prompt"] for b in fake.bodies[:2]}
    measured = {r.requested_prompt_len for r in out.points[0].results}
    assert measured == {4} and not warm_prompts & {b["prompt"] for b in fake.bodies[2:]}


def test_a_hanging_server_ends_in_timeouts_within_bounds(clock: VirtualClock) -> None:
    out = _run(clock, FakeOpenAI(scenario="hang"), timeout=0.3, num_requests=4, warmup=1)
    assert out.warmup_errors == 1
    assert out.points[0].stats.errors == {"timeout": 4}
    assert out.points[0].stats.completed == 0
    # warm-up (1 timeout) + 4 requests on 2 workers (2 rounds of timeouts), not the hour-long
    # hang of the fake
    assert clock.now == pytest.approx(3 * 0.3)


def test_duration_mode_stops_starting_and_ends_on_a_hang(clock: VirtualClock) -> None:
    out = _run(
        clock,
        FakeOpenAI(scenario="hang"),
        [LoadPoint("rate", 20.0)],
        num_requests=None,
        duration=0.5,
        timeout=0.3,
        seed=3,
    )
    results = out.points[0].results
    # Exactly the arrivals of the seeded Poisson schedule that fall within the 0.5 s.
    gaps = poisson_gaps(20.0, random.Random("3/arrivals/20.0"))
    starts = list(itertools.takewhile(lambda t: t < 0.5, itertools.accumulate(gaps, initial=0.0)))
    assert len(results) == len(starts) and {r.error for r in results} == {"timeout"}
    assert [r.send_time for r in results] == pytest.approx(starts, abs=1e-9)
    assert clock.now == pytest.approx(starts[-1] + 0.3)  # the last one timed out, then done


@pytest.mark.parametrize(
    ("fake", "kind"),
    [
        (FakeOpenAI(scenario="status", status=429), "http_429"),
        (FakeOpenAI(scenario="status", status=503), "http_503"),
        (FakeOpenAI(scenario="stream_error"), "stream_error"),
        (FakeOpenAI(scenario="no_done"), "incomplete"),
    ],
)
def test_errors_are_counted_by_kind(clock: VirtualClock, fake: FakeOpenAI, kind: str) -> None:
    stats = _run(clock, fake).points[0].stats
    assert stats.errors == {kind: 4}
    assert stats.completed == 0 and stats.output_tokens == 0


def test_without_usage_the_chunks_are_counted(clock: VirtualClock) -> None:
    out = _run(clock, FakeOpenAI(scenario="no_usage"))
    assert [r.output_tokens for r in out.points[0].results] == [8] * 4
    assert not any(r.usage_reported for r in out.points[0].results)
    assert out.points[0].stats.mean_prompt_tokens is None


def test_a_closed_port_is_a_connection_error() -> None:
    async def go() -> str | None:
        async with httpx.AsyncClient() as client:
            spec = RequestSpec(" hi", 1, 2)
            payload = completion_payload(spec, None, ignore_eos=True, temperature=0.0)
            url = f"http://127.0.0.1:{free_port()}/v1/completions"
            result = await stream_completion(client, url, payload, timeout=5)
            return result.error

    assert asyncio.run(go()) == "connection"


def test_payload_fields() -> None:
    spec = RequestSpec(" a b", 2, 9)
    payload = completion_payload(spec, "m", ignore_eos=True, temperature=0.0)
    assert payload == {
        "prompt": " a b",
        "max_tokens": 9,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "model": "m",
        "ignore_eos": True,
    }
    assert "ignore_eos" not in completion_payload(spec, None, ignore_eos=False, temperature=1)


def test_open_loop_follows_the_arrival_schedule(clock: VirtualClock) -> None:
    sent: list[float] = []

    async def send(spec: RequestSpec) -> object:
        sent.append(clock.time())
        await asyncio.sleep(1.0)  # a slow request does not hold up the next arrival
        return spec

    gaps = iter([0.1, 0.2, 0.1, 5.0])
    clock.run(open_loop(send, WORKLOAD.specs(), gaps, Budget(4, None)))  # type: ignore[arg-type]
    assert sent == pytest.approx([0.0, 0.1, 0.3, 0.4], abs=1e-9)
    assert clock.now == pytest.approx(1.4)  # the last one, then nothing waits for the 5.0 gap


def test_open_loop_stops_starting_at_the_deadline(clock: VirtualClock) -> None:
    sent: list[float] = []

    async def send(spec: RequestSpec) -> object:
        sent.append(clock.time())
        return spec

    gaps = iter([0.2] * 100)
    clock.run(open_loop(send, WORKLOAD.specs(), gaps, Budget(None, 0.5)))  # type: ignore[arg-type]
    assert sent == pytest.approx([0.0, 0.2, 0.4], abs=1e-9)
    assert clock.now == pytest.approx(0.5)


def test_sweep_report_json_and_plots(clock: VirtualClock, tmp_path: Path) -> None:
    from app.bench import report
    from app.bench.plots import write_plots

    points = [LoadPoint("concurrency", 1), LoadPoint("concurrency", 2)]
    short = Workload(output=LengthDist.fixed(3), prompt=LengthDist.fixed(4))
    ours = _run(clock, FakeOpenAI(ttft=0.02, gap=0.01), points, short)
    theirs = _run(clock, FakeOpenAI(ttft=0.08, gap=0.04), points, short)
    theirs.target = Target("slow", "http://slow.test")
    text = report.render("gpt2-serve bench --url x", {"seed": 0}, [ours, theirs])
    assert text.startswith("$ gpt2-serve bench --url x\n")
    assert "concurrency=2" in text and "== fake / baseline" in text
    rows = report.comparison([ours, theirs])
    assert [r["point"] for r in rows] == ["concurrency=1", "concurrency=2"]
    assert all(r["baseline"] == "slow" for r in rows)
    assert [r["ttft_p50_ratio"] for r in rows] == pytest.approx([0.25, 0.25])
    assert [r["output_tok_s_ratio"] for r in rows] == pytest.approx([4.0, 4.0])
    doc = report.to_json("cmd", {}, {}, [ours, theirs])
    assert doc["targets"][0]["points"][1]["stats"]["completed"] == 4
    assert len(doc["targets"][1]["points"][0]["requests"]) == 4
    assert doc["targets"][0]["points"][0]["metrics_check"] is None  # no gpt2 /metrics
    paths = write_plots(tmp_path / "plots", [ours, theirs], "cmd")
    assert [p.name for p in paths] == ["throughput_latency.png", "ttft_cdf.png", "itl_cdf.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_the_report_shows_the_first_errors_status_and_detail(clock: VirtualClock) -> None:
    """A run whose requests all fail says why on the console, not only in the JSON."""
    from app.bench import report

    refused = FakeOpenAI(scenario="status", status=422)
    failed = _run(clock, refused, warmup=1)
    text = report.render("gpt2-serve bench --url x", {"seed": 0}, [failed])
    assert 'first error: http_422 {"error":{"message":"queue full"}}' in text
    assert "(the warm-up's)" in text  # the warm-up failed first, before any point

    in_a_point = _run(clock, FakeOpenAI(scenario="stream_error"))
    text = report.render("cmd", {}, [in_a_point])
    detail = '{"message": "worker lost", "code": 503}'
    assert f"first error: stream_error {detail} (concurrency=2)" in text

    ok = _run(clock, FakeOpenAI())
    assert "first error" not in report.render("cmd", {}, [ok])
