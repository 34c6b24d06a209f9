"""OutputProcessor.process's inline path for the common row (one token, not the last, no
extras) against the general path (_row, _advance, IncrementalDetokenizer.add) that every other
row takes: the same random steps through both must give the same deltas, the same aborts and
the same records. Also IncrementalDetokenizer.add_one against add.

Random steps: requests with and without stop strings (several characters, multi-byte ones),
skip_special_tokens either way, token scripts of random text whose multi-byte characters are
split over tokens (one token per byte, as the API tests' fake), stray invalid bytes, EOS in the
middle, rows of several requests in random order, a request's rows going on after a stop string
ended it (the worker has not seen the abort yet), extras (scheduled, cached tokens, logprobs,
prompt logprobs) on some rows, and endings of every kind: finish on the last token (stop,
length), an abort row (no token), or still running when the steps run out."""

from __future__ import annotations

import random
import types
from array import array
from collections.abc import Callable
from typing import Any

import pytest

from app.engine.client import output_processor
from app.engine.client.detokenizer import IncrementalDetokenizer
from app.engine.client.output_processor import OutputProcessor, _Extras
from app.engine.protocol import (
    FINISH_CODES,
    FinishReason,
    RequestRecord,
    SamplingParams,
    StepResult,
    TokenLogprobs,
)
from tests.api.fakes import EOS, TOKEN_BYTES

ALPHABET = "ab xyé日😀\n"
STOPS: list[tuple[str, ...]] = [(), (), ("xy",), ("é日", "b b"), ("\n\n",), ("😀",)]


class GeneralOnly(OutputProcessor):
    """Every row through _row: the general path the inline one must equal."""

    def process(self, step: StepResult) -> None:
        now = output_processor.time.monotonic()  # type: ignore[attr-defined]  # the test's clock
        extras = _Extras(step)
        for row, (handle, token, code) in enumerate(
            zip(step.handles, step.tokens, step.finish, strict=True)
        ):
            req = self._by_handle.get(handle)
            if req is not None:
                self._row(req, row, token, code, extras, now)


def _script(rng: random.Random) -> list[int]:
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))
    ids = list(text.encode())
    for _ in range(rng.randint(0, 2)):
        ids.insert(rng.randint(0, len(ids)), rng.choice([EOS, 0xFF, 0x80, 0xE6]))
    return ids


def _scenario(seed: int) -> tuple[list[tuple[str, SamplingParams]], list[StepResult]]:
    """Requests (id, params) and the worker's steps for them."""
    rng = random.Random(seed)
    requests: list[tuple[str, SamplingParams]] = []
    rows_of: dict[int, list[tuple[int, FinishReason | None]]] = {}
    for i in range(rng.randint(1, 6)):
        params = SamplingParams(
            max_tokens=1000,
            stop=rng.choice(STOPS),
            include_stop_str_in_output=rng.random() < 0.5,
            skip_special_tokens=rng.random() < 0.7,
        )
        requests.append((f"r{i}", params))
        ids = _script(rng)
        ending = rng.choice(["stop", "length", "abort", "open"])
        rows: list[tuple[int, FinishReason | None]] = [(t, None) for t in ids]
        if ending in ("stop", "length"):  # finish on the last token
            rows[-1] = (ids[-1], FinishReason.STOP if ending == "stop" else FinishReason.LENGTH)
        elif ending == "abort":
            rows.append((-1, FinishReason.ABORT))
        rows_of[i + 1] = rows
    steps, sent = [], dict.fromkeys(rows_of, 0)
    while any(sent[h] < len(rows) for h, rows in rows_of.items()):
        handles = [h for h, rows in rows_of.items() if sent[h] < len(rows) and rng.random() < 0.8]
        rng.shuffle(handles)
        tokens, finish, scheduled, cached, logprobs, prompt_lp = [], [], [], [], [], []
        for row, h in enumerate(handles):
            token, reason = rows_of[h][sent[h]]
            tokens.append(token)
            finish.append(FINISH_CODES.index(reason))
            if sent[h] == 0:
                scheduled.append((row, 0.5 * h))
                if rng.random() < 0.3:
                    cached.append((row, rng.randint(1, 3)))
                if rng.random() < 0.2:
                    prompt_lp.append((row, (None, TokenLogprobs(h, -1.0))))
            if token >= 0 and rng.random() < 0.2:
                logprobs.append((row, TokenLogprobs(token, -0.5, ((token, -0.5),), 1)))
            sent[h] += 1
        steps.append(
            StepResult(
                array("q", handles),
                array("q", tokens),
                bytes(finish),
                scheduled=tuple(scheduled),
                cached_tokens=tuple(cached),
                logprobs=tuple(logprobs),
                prompt_logprobs=tuple(prompt_lp),
            )
        )
    return requests, steps


def _run(
    cls: type[OutputProcessor],
    requests: list[tuple[str, SamplingParams]],
    steps: list[StepResult],
    monkeypatch: pytest.MonkeyPatch,
    wrap_row: Callable[[Any], Any] | None = None,
) -> tuple[dict[str, list[object]], list[str], list[RequestRecord]]:
    ticks = iter(range(10**6))  # the same clock readings for both runs, one tick a reading
    monkeypatch.setattr(
        output_processor, "time", types.SimpleNamespace(monotonic=lambda: 0.25 * next(ticks))
    )
    aborts: list[str] = []
    records: list[RequestRecord] = []
    proc = cls(TOKEN_BYTES, frozenset({EOS}), None, aborts.append, records.append)
    if wrap_row is not None:
        proc._row = wrap_row(proc._row)  # type: ignore[method-assign]
    deltas: dict[str, list[object]] = {}
    for handle, (rid, params) in enumerate(requests, 1):
        proc.add(rid, handle, 3, params, deltas.setdefault(rid, []).append)
    for step in steps:
        proc.process(step)
    for rid, _ in requests:  # the ones still running: their callers leave
        if rid in proc.requests:
            proc.leave(proc.requests[rid])
    return deltas, aborts, records


def test_the_inline_path_equals_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    general_rows = all_rows = 0

    def counting(row: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            nonlocal general_rows
            general_rows += 1
            return row(*args)

        return wrapper

    for seed in range(300):
        requests, steps = _scenario(seed)
        fast = _run(OutputProcessor, requests, steps, monkeypatch, counting)
        general = _run(GeneralOnly, requests, steps, monkeypatch)
        assert fast == general, f"seed {seed}"
        for record in fast[2]:  # and the timing marks both keep are right
            gaps = record.inter_token_gaps
            assert record.timings.max_inter_token == max(gaps, default=0.0)
            assert len(gaps) == max(0, record.num_output_tokens - 1)
        all_rows += sum(len(step) for step in steps)
    # Both paths were taken, many times: the comparison covered the inline one.
    inline_rows = all_rows - general_rows  # rows of requests already ended take neither
    assert inline_rows > 1000 and general_rows > 1000, (inline_rows, general_rows)


@pytest.mark.parametrize("skip", [True, False])
def test_add_one_equals_add(skip: bool) -> None:
    """add_one against add on the stop-string path, with stop strings that never match: one
    of a character that never occurs (nothing held back: the same text token by token), one
    whose first and last characters do occur (held back, then handed out: the same text in
    all). Both against a one-shot decode."""
    rng = random.Random(skip)
    special = frozenset({EOS})
    for _ in range(200):
        # Some long enough for the pieces handed out to be joined (detokenizer.PIECES).
        ids = [t for _ in range(rng.choice([2, 2, 30])) for t in _script(rng)]
        one = IncrementalDetokenizer(TOKEN_BYTES, special, skip_special_tokens=skip)
        same = IncrementalDetokenizer(TOKEN_BYTES, special, ["\x00"], False, skip)
        held = IncrementalDetokenizer(TOKEN_BYTES, special, ["a\x00b"], False, skip)
        assert one.plain and not same.plain and not held.plain
        streamed = ""
        for t in ids[:-1]:
            text = one.add_one(t)
            assert text == same.add([t]).text
            assert one.text == same.text
            streamed += held.add([t]).text
        last = ids[-1:]  # the last token, flushed, takes add() on both
        assert one.add(last, final=True) == same.add(last, final=True)
        streamed += held.add(last, final=True).text
        whole = bytes(b for t in ids if t != EOS or not skip for b in TOKEN_BYTES[t])
        assert one.text == same.text == held.text == streamed == whole.decode(errors="replace")


def test_add_one_equals_add_with_stop_strings_that_match() -> None:
    """Token by token: the same text, stopping at the same token, with the same stop string."""
    rng = random.Random(7)
    special = frozenset({EOS})
    matched = 0
    for _ in range(500):
        ids = _script(rng) + _script(rng) + _script(rng)
        stop, include, skip = rng.choice(STOPS[2:]), rng.random() < 0.5, rng.random() < 0.5
        one = IncrementalDetokenizer(TOKEN_BYTES, special, stop, include, skip)
        ref = IncrementalDetokenizer(TOKEN_BYTES, special, stop, include, skip)
        for t in ids:
            delta = ref.add([t])
            assert one.add_one(t) == delta.text
            assert (one.stopped, one.text) == (ref.stopped, ref.text)
            if delta.stop_string is not None:  # the token that matched
                assert one.stop_string == delta.stop_string
        matched += one.stopped
    assert matched > 100
