"""OutputProcessor: the worker's per-step outputs -> each request's deltas, with the aborts it
asks of the worker, the admission counts it keeps, and one RequestRecord per request, whatever
the way the request ends (pure Python, fast; part of `make mutation`).

One token per byte (as the API tests' fake), so every stop string of two or more characters
spans tokens, and a character of two or more bytes spans tokens."""

from __future__ import annotations

import asyncio
from array import array
from typing import Any

import pytest

from app.engine.client.admission import AdmissionControl
from app.engine.client.output_processor import OutputProcessor
from app.engine.errors import EngineDeadError, InvalidRequestError
from app.engine.protocol import (
    FINISH_CODES,
    FinishReason,
    GenerationDelta,
    Outcome,
    RequestRecord,
    SamplingParams,
    StepResult,
    TokenLogprobs,
)

EOS = 256
TOKEN_BYTES = [bytes([i]) for i in range(256)] + [b"<|endoftext|>"]


class Harness:
    def __init__(self, admission: AdmissionControl | None = None) -> None:
        self.aborts: list[str] = []
        self.records: list[RequestRecord] = []
        self.admission = admission
        self.proc = OutputProcessor(
            TOKEN_BYTES, frozenset({EOS}), admission, self.aborts.append, self.records.append
        )

        self.handles: dict[str, int] = {}

    def add(self, rid: str = "r", prompt_len: int = 3, **kw: Any) -> Any:
        if self.admission is not None:
            self.admission.admit(prompt_len)
        handle = self.handles[rid] = len(self.handles) + 1
        return self.proc.add(rid, handle, prompt_len, SamplingParams(**kw))

    def out(
        self,
        text: str | list[int],
        finish: FinishReason | None = None,
        rid: str = "r",
        n: int = 0,
        scheduled: float | None = 1.0,
        **kw: Any,
    ) -> None:
        """The worker's report of `text`'s tokens, one step each (the worker samples one token
        per request per step); `finish` and the extras (kw) with the last, `scheduled` with the
        first. An empty text is a row with no token (how an abort is reported)."""
        ids = list(text.encode() if isinstance(text, str) else text) or [-1]
        for i, token in enumerate(ids):
            last = i == len(ids) - 1
            self.proc.process(
                step_of(
                    self.handles.setdefault(rid, len(self.handles) + 1),
                    token,
                    finish if last else None,
                    scheduled if i == 0 else None,
                    **(kw if last else {}),
                )
            )


def step_of(
    handle: int,
    token: int,
    finish: FinishReason | None = None,
    scheduled: float | None = None,
    logprobs: TokenLogprobs | None = None,
    prompt_logprobs: tuple[TokenLogprobs | None, ...] | None = None,
) -> StepResult:
    """A one-row StepResult, as the worker sends it."""
    return StepResult(
        array("q", [handle]),
        array("q", [token]),
        bytes([FINISH_CODES.index(finish)]),
        scheduled=((0, scheduled),) if scheduled is not None else (),
        logprobs=((0, logprobs),) if logprobs is not None else (),
        prompt_logprobs=((0, prompt_logprobs),) if prompt_logprobs is not None else (),
    )


def drain(req: Any) -> list[GenerationDelta | BaseException]:
    items = []
    while not req.queue.empty():
        items.append(req.queue.get_nowait())
    return items


def texts(req: Any) -> list[str]:
    return [d.text for d in drain(req)]  # type: ignore[union-attr]


def test_tokens_become_text_deltas_and_the_last_carries_the_finish() -> None:
    h = Harness()
    req = h.add(max_tokens=3)
    h.out("a", n=1)
    h.out("b", n=2)
    h.out("c", FinishReason.LENGTH, n=3)
    deltas = drain(req)
    assert [(d.text, d.token_ids, d.finish_reason) for d in deltas] == [  # type: ignore[union-attr]
        ("a", (97,), None),
        ("b", (98,), None),
        ("c", (99,), FinishReason.LENGTH),
    ]
    last = deltas[-1]
    assert isinstance(last, GenerationDelta)
    assert (last.num_prompt_tokens, last.num_output_tokens, last.stop_reason) == (3, 3, None)
    assert last.timings is not None and deltas[0].timings is None  # type: ignore[union-attr]
    [record] = h.records
    assert (record.request_id, record.outcome, record.num_output_tokens) == ("r", "length", 3)
    assert len(record.inter_token_gaps) == 2
    assert h.aborts == [] and h.proc.requests == {} and h.proc.idle.is_set()


def test_a_character_split_across_tokens_comes_out_whole() -> None:
    h = Harness()
    req = h.add()
    for i, byte in enumerate("☕".encode()):
        h.out([byte], FinishReason.LENGTH if i == 2 else None, n=i + 1)
    assert texts(req) == ["", "", "☕"]


@pytest.mark.parametrize("include", [False, True])
def test_a_multi_token_stop_string_is_held_then_cut_and_the_worker_asked_to_abort(
    include: bool,
) -> None:
    h = Harness()
    req = h.add(stop=("fox",), include_stop_str_in_output=include, max_tokens=50)
    for i, ch in enumerate(" the fox jumps"):
        h.out(ch, n=i + 1)
    deltas = drain(req)
    assert [d.text for d in deltas] == [  # type: ignore[union-attr]
        *" the ",
        "",  # "f" could start "fox": held back, not streamed
        "",
        "fox" if include else "",
    ]
    last = deltas[-1]
    assert isinstance(last, GenerationDelta)
    assert (last.finish_reason, last.stop_reason, last.num_output_tokens) == ("stop", "fox", 8)
    assert h.aborts == ["r"]  # the worker would go on: it must be told
    assert [r.outcome for r in h.records] == [Outcome.STOP]
    h.out("j", n=9)  # a step already under way: its output is ignored
    assert drain(req) == [] and len(h.records) == 1


def test_a_stop_string_on_the_workers_last_token_needs_no_abort() -> None:
    h = Harness()
    req = h.add(stop=("ox",))
    h.out("o", n=1)
    h.out("x", FinishReason.LENGTH, n=2)
    *_, last = drain(req)
    assert isinstance(last, GenerationDelta)
    assert (last.text, last.finish_reason, last.stop_reason) == ("", "stop", "ox")
    assert h.aborts == []


def test_a_stop_token_is_the_stop_reason() -> None:
    h = Harness()
    req = h.add(stop_token_ids=(33,))
    h.out("a!", FinishReason.STOP, n=2)
    delta = drain(req)[-1]  # one step per token: the last carries the finish
    assert isinstance(delta, GenerationDelta)
    assert (delta.text, delta.stop_reason) == ("!", 33)
    assert h.aborts == []


def test_eos_is_skipped_and_a_stop_without_tokens_has_no_reason() -> None:
    h = Harness()
    req = h.add()
    h.out([97, EOS], FinishReason.STOP, n=2)
    delta = drain(req)[-1]  # one step per token: the last carries the finish
    assert isinstance(delta, GenerationDelta)
    assert (delta.text, delta.stop_reason) == ("", EOS)  # EOS shows no text
    req = h.add("q")
    h.out([], FinishReason.STOP, rid="q")
    [delta] = drain(req)
    assert isinstance(delta, GenerationDelta)
    assert (delta.finish_reason, delta.stop_reason) == ("stop", None)


def test_held_text_is_flushed_on_the_last_output() -> None:
    h = Harness()
    req = h.add(stop=("fox",))
    h.out("f", n=1)
    h.out("o", FinishReason.LENGTH, n=2)
    assert texts(req) == ["", "fo"]


def test_logprobs_and_prompt_logprobs_pass_through() -> None:
    h = Harness()
    req = h.add()
    lp = TokenLogprobs(97, -0.5)
    prompt = (None, TokenLogprobs(1, -1.0))
    h.proc.process(step_of(h.handles["r"], 97, None, 1.0, logprobs=lp, prompt_logprobs=prompt))
    [delta] = drain(req)
    assert isinstance(delta, GenerationDelta)
    assert (delta.logprobs, delta.prompt_logprobs) == ((lp,), prompt)


def test_leaving_a_running_request_aborts_it_in_the_worker_once() -> None:
    h = Harness()
    req = h.add()
    h.out("a", n=1)
    h.proc.leave(req)
    assert h.aborts == ["r"]
    assert [(r.outcome, r.num_output_tokens) for r in h.records] == [(Outcome.DISCONNECTED, 1)]
    assert h.proc.requests == {} and h.proc.idle.is_set()
    h.proc.leave(req)  # leaving again, or after the end, does nothing more
    assert h.aborts == ["r"] and len(h.records) == 1


def test_leaving_a_finished_request_sends_no_abort() -> None:
    h = Harness()
    req = h.add()
    h.out("a", FinishReason.LENGTH, n=1)
    h.proc.leave(req)
    assert h.aborts == [] and [r.outcome for r in h.records] == [Outcome.LENGTH]


def test_leaving_an_old_request_leaves_a_new_one_of_the_same_id_alone() -> None:
    h = Harness()
    old = h.add()
    h.out("a", FinishReason.LENGTH)
    new = h.add()
    h.proc.leave(old)
    assert h.aborts == [] and h.proc.requests == {"r": new}


def test_a_request_id_in_use_is_refused() -> None:
    h = Harness()
    h.add()
    with pytest.raises(InvalidRequestError) as err:
        h.add()
    assert (err.value.field, err.value.message) == ("request_id", "'r' is already in use")


def test_idle_follows_the_requests() -> None:
    h = Harness()
    assert h.proc.idle.is_set()
    h.add("a")
    h.add("b")
    assert not h.proc.idle.is_set()
    h.out("x", FinishReason.LENGTH, rid="a")
    assert not h.proc.idle.is_set()
    h.out("x", FinishReason.LENGTH, rid="b")
    assert h.proc.idle.is_set()


def test_outputs_of_unknown_requests_are_ignored() -> None:
    h = Harness()
    h.out("a", FinishReason.ABORT, rid="gone")
    assert h.records == [] and h.aborts == []


def test_admission_counts_the_prompt_until_scheduled_and_the_place_until_the_end() -> None:
    admission = AdmissionControl(max_running=2, max_queued_requests=0, max_queued_tokens=100)
    h = Harness(admission)
    h.add("a", prompt_len=10)
    h.add("b", prompt_len=20)
    assert (admission.in_flight, admission.queued_tokens) == (2, 30)
    h.out("x", rid="a", scheduled=None)  # no scheduling time reported: still waiting
    assert admission.queued_tokens == 30
    h.out("x", rid="a")
    h.out("y", rid="a")  # scheduled once, counted once
    assert (admission.in_flight, admission.queued_tokens) == (2, 20)
    h.out("x", FinishReason.LENGTH, rid="a")
    assert (admission.in_flight, admission.queued_tokens) == (1, 20)
    h.proc.fail("b", EngineDeadError("gone"), Outcome.WORKER_LOST)  # never scheduled
    assert (admission.in_flight, admission.queued_tokens) == (0, 0)
    assert admission.drain_rate() > 0  # both ends were counted as finishes


def test_scheduling_time_is_the_workers() -> None:
    h = Harness()
    req = h.add()
    h.out("a", FinishReason.LENGTH, scheduled=req.arrival + 0.25)
    assert req.scheduled_at == req.arrival + 0.25
    assert h.records[0].timings.queue == pytest.approx(0.25)


def test_fail_ends_the_stream_with_the_error() -> None:
    async def scenario() -> None:
        h = Harness()
        req = h.add()
        h.out("a")
        error = EngineDeadError("worker died")
        h.proc.fail("r", error, Outcome.WORKER_LOST)
        h.proc.fail("r", error, Outcome.WORKER_LOST)  # a second time: nothing more
        seen = []
        with pytest.raises(EngineDeadError):
            async for delta in h.proc.deltas(req):
                seen.append(delta.text)
        assert seen == ["a"]
        assert [r.outcome for r in h.records] == [Outcome.WORKER_LOST]
        assert h.aborts == []

    asyncio.run(scenario())


def test_fail_all_ends_every_request() -> None:
    h = Harness()
    reqs = [h.add(rid) for rid in "abc"]
    h.proc.fail_all(EngineDeadError("shutting down"), Outcome.SHUTDOWN)
    assert [r.outcome for r in h.records] == [Outcome.SHUTDOWN] * 3
    assert all(isinstance(drain(req)[0], EngineDeadError) for req in reqs)
    assert h.proc.requests == {} and h.proc.idle.is_set()


def test_deltas_end_with_the_finished_one() -> None:
    async def scenario() -> list[str]:
        h = Harness()
        req = h.add()
        h.out("a")
        h.out("b", FinishReason.LENGTH)
        h.out("c", rid="other")
        return [d.text async for d in h.proc.deltas(req)]

    assert asyncio.run(scenario()) == ["a", "b"]


def test_a_deadline_aborts_the_request_and_ends_it_with_timeout() -> None:
    """The worker never answers here, so the deadline is what ends the request, whatever the
    speed of the machine."""

    async def scenario() -> tuple[Harness, list[GenerationDelta]]:
        h = Harness()
        req = h.add(timeout=0.01, stop=("fox",))
        h.out("f")  # held back: could start "fox"
        return h, [d async for d in h.proc.deltas(req)]

    h, deltas = asyncio.run(scenario())
    assert [(d.text, d.finish_reason) for d in deltas] == [("", None), ("f", "timeout")]
    assert deltas[-1].timings is not None and deltas[-1].num_output_tokens == 1
    assert h.aborts == ["r"]
    assert [r.outcome for r in h.records] == [Outcome.TIMEOUT]


def test_a_request_that_ends_in_time_cancels_its_deadline() -> None:
    async def scenario() -> Harness:
        h = Harness()
        req = h.add(timeout=0.05)
        h.out("a", FinishReason.LENGTH)
        assert req.deadline is not None and req.deadline.cancelled()
        await asyncio.sleep(0.1)
        return h

    h = asyncio.run(scenario())
    assert h.aborts == [] and [r.outcome for r in h.records] == [Outcome.LENGTH]


def test_expiring_an_ended_request_does_nothing() -> None:
    h = Harness()
    h.add()
    h.out("a", FinishReason.LENGTH)
    h.proc.expire("r")
    h.proc.expire("never-seen")
    assert h.aborts == [] and len(h.records) == 1


def test_special_tokens_show_when_asked() -> None:
    h = Harness()
    req = h.add(skip_special_tokens=False)
    h.out([97, EOS], FinishReason.STOP, n=2)
    assert "".join(texts(req)) == "a<|endoftext|>"


def test_the_stop_token_is_the_last_of_the_step() -> None:
    h = Harness()
    req = h.add(stop_token_ids=(33,))
    h.out("ab!", FinishReason.STOP, n=3)  # the step whose token stopped it
    delta = drain(req)[-1]  # one step per token: the last carries the finish
    assert isinstance(delta, GenerationDelta) and delta.stop_reason == 33


def test_the_timeout_delta_carries_no_tokens() -> None:
    async def scenario() -> list[GenerationDelta]:
        h = Harness()
        req = h.add(timeout=0.01)
        return [d async for d in h.proc.deltas(req)]

    [delta] = asyncio.run(scenario())
    assert (delta.token_ids, delta.logprobs, delta.stop_reason) == ((), (), None)


def test_finish_reports_once_however_often_it_is_called() -> None:
    h = Harness()
    req = h.add()
    h.proc.finish(req, Outcome.ABORT)
    h.proc.finish(req, Outcome.ABORT)
    assert [r.outcome for r in h.records] == [Outcome.ABORT]


def test_the_prefix_cache_hit_a_step_reports_reaches_the_request_s_deltas() -> None:
    """The worker reports a row's cached prompt tokens with its first token: the deltas (and
    the usage built from them) carry it from then on."""
    h = Harness()
    req = h.add(max_tokens=4, prompt_len=40)
    handle = h.handles["r"]
    first = StepResult(
        array("q", [handle]),
        array("q", [ord("a")]),
        bytes([FINISH_CODES.index(None)]),
        scheduled=((0, 1.0),),
        cached_tokens=((0, 32),),
    )
    h.proc.process(first)
    h.proc.process(step_of(handle, ord("b")))
    deltas = [d for d in drain(req) if isinstance(d, GenerationDelta)]
    assert [d.num_cached_tokens for d in deltas] == [32, 32]


def test_token_id_zero_is_a_token_on_every_path() -> None:
    """Id 0 is a real token (GPT-2's "!"): a row carrying it is a token whether it takes the
    inline path or the general one (a first row, with its scheduled time)."""
    h = Harness()
    req = h.add(max_tokens=3)
    h.out([0, 0])  # the first row with its extras (general path), then the inline path
    h.out([0], finish=FinishReason.LENGTH)  # a finishing row (general path)
    deltas = [d for d in drain(req) if isinstance(d, GenerationDelta)]
    assert [d.token_ids for d in deltas] == [(0,), (0,), (0,)]
    assert deltas[-1].num_output_tokens == 3


def test_a_request_added_with_a_sink_gets_its_deltas_there_and_not_in_a_queue() -> None:
    h = Harness()
    got: list[GenerationDelta | BaseException] = []
    req = h.proc.add("r", 1, 3, SamplingParams(max_tokens=2), sink=got.append)
    h.handles["r"] = 1
    h.out("ab", finish=FinishReason.LENGTH)
    assert [d.text for d in got if isinstance(d, GenerationDelta)] == ["a", "b"]
    assert drain(req) == []
