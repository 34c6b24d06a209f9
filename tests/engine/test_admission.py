"""AdmissionControl: the in-flight and waiting-token limits, and Retry-After computed from the
drain rate at controlled times (pure Python, fast; part of `make mutation`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.engine.client.admission import RATE_WINDOW_SECONDS, AdmissionControl
from app.engine.errors import OverloadedError


def _finished_at(control: AdmissionControl, *times: float) -> None:
    for t in times:
        control.record_finished(now=t)


def test_in_flight_limit_is_running_plus_queued() -> None:
    control = AdmissionControl(max_running=2, max_queued_requests=1, max_queued_tokens=1000)
    assert control.max_in_flight == 3
    for _ in range(3):
        control.admit(10)
    assert (control.in_flight, control.queued_tokens) == (3, 30)
    with pytest.raises(OverloadedError) as err:
        control.admit(1)
    assert str(err.value) == (
        "server overloaded: 3 requests in flight, the limit is 3 "
        "(max_num_seqs + max_queued_requests); retry later"
    )
    assert (control.in_flight, control.queued_tokens) == (3, 30)  # a refusal counts nothing


def test_queued_token_limit_counts_only_prompts_not_yet_scheduled() -> None:
    control = AdmissionControl(max_running=8, max_queued_requests=8, max_queued_tokens=100)
    control.admit(60)
    control.admit(40)  # exactly the limit
    with pytest.raises(OverloadedError) as err:
        control.admit(1)
    assert str(err.value) == (
        "server overloaded: 100 prompt tokens waiting, + 1 would pass the limit of 100 "
        "(max_queued_tokens)"
    )
    control.scheduled(60)  # the worker started the first: its prompt no longer waits
    assert control.queued_tokens == 40
    control.admit(60)
    assert (control.in_flight, control.queued_tokens) == (3, 100)


def test_release_frees_the_place_and_the_tokens_of_an_unscheduled_request() -> None:
    control = AdmissionControl(max_running=1, max_queued_requests=1, max_queued_tokens=50)
    control.admit(30)
    control.admit(20)
    control.scheduled(30)
    control.release(30, was_scheduled=True, now=1.0)
    assert (control.in_flight, control.queued_tokens) == (1, 20)
    control.release(20, was_scheduled=False, now=2.0)
    assert (control.in_flight, control.queued_tokens) == (0, 0)
    assert control.drain_rate(now=2.0) == pytest.approx(2 / 1.0)


def test_drain_rate_is_finishes_per_second_over_the_recent_window() -> None:
    control = AdmissionControl(1, 1, 1)
    assert control.drain_rate(now=5.0) == 0.0  # nothing finished yet
    _finished_at(control, 1.0)
    assert control.drain_rate(now=5.0) == 0.0  # one finish says nothing of a rate
    _finished_at(control, 2.0, 3.0, 5.0)
    assert control.drain_rate(now=9.0) == pytest.approx(4 / 8.0)
    # Finishes older than the window no longer count.
    assert control.drain_rate(now=1.0 + RATE_WINDOW_SECONDS) == pytest.approx(4 / 30.0)
    assert control.drain_rate(now=2.0 + RATE_WINDOW_SECONDS + 0.5) == pytest.approx(2 / 29.5)
    assert control.drain_rate(now=100.0) == 0.0


def test_drain_rate_of_simultaneous_finishes_is_bounded() -> None:
    control = AdmissionControl(1, 1, 1)
    _finished_at(control, 7.0, 7.0, 7.0)
    assert control.drain_rate(now=7.0) == pytest.approx(3 / 1e-3)


def test_retry_after_is_the_time_to_drain_the_excess() -> None:
    control = AdmissionControl(1, 1, 1)
    _finished_at(control, 0.0, 10.0, 20.0)  # 3 finishes over 25 s at now=25: 0.12 per second
    assert control.retry_after(1, now=25.0) == 9  # ceil(1 / 0.12) = ceil(8.33)
    assert control.retry_after(2, now=25.0) == 17  # ceil(16.67)
    assert control.retry_after(100, now=25.0) == 60  # at most a minute


def test_retry_after_is_one_second_when_the_rate_is_unknown_or_fast() -> None:
    control = AdmissionControl(1, 1, 1)
    assert control.retry_after(5, now=0.0) == 1
    _finished_at(control, 0.0, 0.1, 0.2, 0.3)
    assert control.retry_after(1, now=0.4) == 1  # 10 per second: well under a second


def test_a_refusal_carries_the_retry_after_of_the_drain_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """admit() reads the clock itself: pin it, so the value is computed, not clamped."""
    import app.engine.client.admission as admission

    clock = [0.0]
    monkeypatch.setattr(admission, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    control = AdmissionControl(max_running=1, max_queued_requests=1, max_queued_tokens=20)
    for t in (0.0, 4.0, 8.0, 12.0):  # 4 finishes, the first 16 s ago: 0.25 per second
        clock[0] = t
        control.admit(5)
        control.release(5, was_scheduled=False)
    clock[0] = 16.0
    control.admit(5)
    control.admit(5)
    with pytest.raises(OverloadedError) as err:
        control.admit(5)  # one request too many: 1 / 0.25 = 4 s
    assert err.value.retry_after == 4
    control.max_in_flight = 10
    with pytest.raises(OverloadedError) as err:
        control.admit(11)  # 10 waiting + 11 > 20 tokens
    assert err.value.retry_after == 4 and "max_queued_tokens" in str(err.value)
    control.max_in_flight = 0  # three requests over the limit: 3 / 0.25 = 12 s
    with pytest.raises(OverloadedError) as err:
        control.admit(1)
    assert err.value.retry_after == 12


def test_check_does_not_count() -> None:
    control = AdmissionControl(max_running=1, max_queued_requests=0, max_queued_tokens=10)
    control.check(0, 0, 10)
    with pytest.raises(OverloadedError):
        control.check(1, 0, 1)
    with pytest.raises(OverloadedError):
        control.check(0, 5, 6)
    assert (control.in_flight, control.queued_tokens) == (0, 0)


def test_one_process_takes_the_whole_limit() -> None:
    admission = AdmissionControl(max_running=4, max_queued_requests=6, max_queued_tokens=1000)
    assert _fill(admission) == 10
    unchanged = r"the limit is 10 \(max_num_seqs \+ max_queued_requests\);"
    with pytest.raises(OverloadedError, match=unchanged):
        admission.admit(1)


def test_each_of_several_processes_takes_its_share_rounded_up() -> None:
    shares = [AdmissionControl(4, 6, 1000, processes=3) for _ in range(3)]
    assert [_fill(a) for a in shares] == [4, 4, 4]  # ceil(10 / 3): never less than the limit
    with pytest.raises(OverloadedError, match="this process's share over 3"):
        shares[0].admit(1)
    tokens = AdmissionControl(100, 0, 1000, processes=3)
    assert _fill(tokens, prompt_tokens=100) == 3  # ceil(1000 / 3) = 334 prompt tokens waiting
    with pytest.raises(OverloadedError, match=r"limit of 334 \(max_queued_tokens, this process"):
        tokens.admit(100)


def _fill(admission: AdmissionControl, prompt_tokens: int = 1) -> int:
    admitted = 0
    while True:
        try:
            admission.admit(prompt_tokens)
        except OverloadedError as exc:
            assert exc.retry_after >= 1
            return admitted
        admitted += 1
