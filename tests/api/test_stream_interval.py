"""--stream-interval N: a stream writes a choice's first token at once, then once every N of its
tokens, and its last at once; the OpenAI routes say a choice's tokens written together in one
chunk, TGI keeps one event per token. Whatever N, a stream says the same: the same text, tokens,
logprobs, finish and usage as with N = 1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st

from app.api.event_stream import EventStreamResponse, StreamEvents
from app.api.streams import ChoiceStreams, merge_deltas, pumped
from app.config import Settings
from app.engine.protocol import FinishReason, GenerationDelta, RequestTimings, TokenLogprobs
from app.main import create_app
from tests.api.conftest import sse_events
from tests.api.fakes import FakeEngineClient
from tests.api.live_server import running
from tests.api.test_event_stream import _Events, _never_disconnects, _Recorder


def _delta(k: int, last: bool, text: str | None = None) -> GenerationDelta:
    finish = FinishReason.LENGTH if last else None
    return GenerationDelta("r", f"t{k}" if text is None else text, (k,), (), finish, 1, k + 1)


class _MergingEvents(_Events):
    merges_deltas = True

    def delta(self, index: int, delta: GenerationDelta) -> bytes:
        return f"data: {delta.text}|{len(delta.token_ids)}\n\n".encode()


async def _serve_paced(events: StreamEvents, n: int, interval: int, sent: _Recorder) -> None:
    """n deltas, each in a step of its own: the loop runs the write batch between two."""

    async def paced() -> AsyncIterator[GenerationDelta]:
        await sent.started.wait()
        for k in range(n):
            yield _delta(k, last=k == n - 1)
            await asyncio.sleep(0)  # the write batch's callback runs before the next step

    streams = ChoiceStreams([pumped(paced)])
    await streams.start(prime_seconds=0.0)
    response = EventStreamResponse(
        streams, events, keep_alive_seconds=None, stream_interval=interval
    )
    await asyncio.wait_for(response({"type": "http"}, _never_disconnects, sent), timeout=30)


def _events(*ks: int) -> bytes:
    return b"".join(f"data: t{k}\n\n".encode() for k in ks)


def test_a_stream_writes_its_first_token_then_every_n_tokens_then_its_last() -> None:
    sent = _Recorder()
    asyncio.run(_serve_paced(_Events(), 10, 3, sent))
    assert sent.bodies == [
        _events(0),  # the first token at once
        _events(1, 2, 3),
        _events(4, 5, 6),
        _events(7, 8, 9) + b"data: [DONE]\n\n",  # the last (three tokens here) with the end
    ]
    assert sent.more == [True, True, True, False]


def test_the_last_token_goes_at_once_however_few_are_waiting() -> None:
    sent = _Recorder()
    asyncio.run(_serve_paced(_Events(), 6, 4, sent))
    assert sent.bodies == [_events(0), _events(1, 2, 3, 4), _events(5) + b"data: [DONE]\n\n"]


def test_interval_one_writes_every_token_alone() -> None:
    sent = _Recorder()
    asyncio.run(_serve_paced(_Events(), 4, 1, sent))
    assert sent.bodies == [_events(0), _events(1), _events(2), _events(3) + b"data: [DONE]\n\n"]


def test_events_that_merge_say_a_write_of_tokens_as_one_event() -> None:
    sent = _Recorder()
    asyncio.run(_serve_paced(_MergingEvents(), 8, 3, sent))
    assert sent.bodies == [
        b"data: t0|1\n\n",
        b"data: t1t2t3|3\n\n",
        b"data: t4t5t6|3\n\n",
        b"data: t7|1\n\ndata: [DONE]\n\n",
    ]


def test_at_interval_one_every_token_stays_its_own_event() -> None:
    """A reader that is behind writes what arrived together in one write, each token still
    its own event, even where events could merge."""
    sent = _Recorder()

    async def burst() -> AsyncIterator[GenerationDelta]:
        await sent.started.wait()
        for k in range(4):  # no await between deltas: one step of the engine's
            yield _delta(k, last=k == 3)

    async def run() -> None:
        streams = ChoiceStreams([pumped(burst)])
        await streams.start(prime_seconds=0.0)
        response = EventStreamResponse(streams, _MergingEvents(), keep_alive_seconds=None)
        await asyncio.wait_for(response({"type": "http"}, _never_disconnects, sent), timeout=30)

    asyncio.run(run())
    assert sent.bodies == [
        b"".join(f"data: t{k}|1\n\n".encode() for k in range(4)) + b"data: [DONE]\n\n"
    ]


def test_a_keep_alive_or_an_error_is_written_at_once() -> None:
    """Held tokens go out with a keep-alive (they are not kept behind it) and with an error."""
    told: list[int] = []

    async def run() -> list[tuple[int, object]]:
        sinks: list[Any] = []
        streams = ChoiceStreams([lambda sink: sinks.append(sink) or (lambda: None)])
        streams.attach(lambda: told.append(len(streams._items)), None, interval=4)
        sink = sinks[0]
        sink(_delta(0, last=False))  # first: told
        sink(_delta(1, last=False))
        sink(_delta(2, last=False))  # held
        streams._put(-1, None)  # a keep-alive: told, with the two held before it
        sink(_delta(3, last=False))
        sink(RuntimeError("worker died"))  # told at once
        return streams.take(merge=True)

    taken = asyncio.run(run())
    assert told == [1, 4, 6]
    assert [index for index, _ in taken] == [0, -1, 0, 0]
    first, _, after, error = (item for _, item in taken)
    assert isinstance(first, GenerationDelta) and first.token_ids == (0, 1, 2)
    assert isinstance(after, GenerationDelta) and after.token_ids == (3,)
    assert isinstance(error, RuntimeError)


def test_the_interval_counts_each_choice_on_its_own() -> None:
    """Two choices, interval 2: each one's first delta tells the reader; then the first choice
    to have two tokens not yet taken does, and the reader takes both choices' tokens; counting
    starts afresh from each take."""
    told: list[int] = []

    async def run() -> tuple[list[tuple[int, object]], list[tuple[int, object]]]:
        sinks: list[Any] = []
        streams = ChoiceStreams([lambda sink: sinks.append(sink) or (lambda: None)] * 2)
        streams.attach(lambda: told.append(len(streams._items)), None, interval=2)
        first, second = sinks
        first(_delta(0, last=False, text="a"))  # told: first of choice 0
        second(_delta(0, last=False, text="b"))  # told: first of choice 1
        first(_delta(1, last=False, text="c"))  # choice 0: 1 not taken
        second(_delta(1, last=False, text="d"))  # choice 1: 1 not taken
        first(_delta(2, last=False, text="e"))  # choice 0: 2 -> told
        taken = streams.take(merge=True)  # the reader's flush
        second(_delta(2, last=False, text="f"))  # choice 1: 1 since the take
        second(_delta(3, last=True, text="g"))  # its last: told
        return taken, streams.take(merge=True)

    taken, rest = asyncio.run(run())
    assert told == [1, 2, 5, 2]
    said = [(index, item.text) for index, item in taken if isinstance(item, GenerationDelta)]
    assert said == [(0, "ace"), (1, "bd")]  # each choice's deltas as one, in first-seen order
    assert [(index, item.text) for index, item in rest] == [(1, "fg")]  # type: ignore[union-attr]
    assert rest[0][1].finish_reason is FinishReason.LENGTH  # type: ignore[union-attr]


_logprobs = st.builds(
    TokenLogprobs,
    token_id=st.integers(0, 50),
    logprob=st.floats(-20, 0),
    top=st.just(()),
)


@st.composite
def _runs(draw: st.DrawFn) -> list[GenerationDelta]:
    """Consecutive deltas of one generation, as the output processor makes them."""
    count = draw(st.integers(1, 6))
    deltas, produced = [], draw(st.integers(0, 3))
    for k in range(count):
        ids = tuple(draw(st.lists(st.integers(0, 50), max_size=3)))
        with_logprobs = draw(st.booleans())
        produced += len(ids)
        last = k == count - 1
        deltas.append(
            GenerationDelta(
                "r",
                draw(st.text(max_size=4)),
                ids,
                tuple(draw(_logprobs) for _ in ids) if with_logprobs else (),
                draw(st.sampled_from([None, FinishReason.STOP])) if last else None,
                7,
                produced,
                draw(st.sampled_from([None, "###", 13])) if last else None,
                RequestTimings(0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
                if last and draw(st.booleans())
                else None,
                ((None,) * 7) if k == 0 and draw(st.booleans()) else None,
                draw(st.integers(0, 7)),
            )
        )
    return deltas


@given(_runs())
def test_merged_deltas_say_what_the_deltas_said(deltas: list[GenerationDelta]) -> None:
    merged = merge_deltas(deltas)
    last = deltas[-1]
    assert merged.text == "".join(d.text for d in deltas)
    assert merged.token_ids == tuple(t for d in deltas for t in d.token_ids)
    assert merged.logprobs == tuple(lp for d in deltas for lp in d.logprobs)
    assert (merged.finish_reason, merged.stop_reason, merged.timings) == (
        last.finish_reason,
        last.stop_reason,
        last.timings,
    )
    assert (merged.num_output_tokens, merged.num_cached_tokens, merged.num_prompt_tokens) == (
        last.num_output_tokens,
        last.num_cached_tokens,
        last.num_prompt_tokens,
    )
    assert merged.prompt_logprobs == deltas[0].prompt_logprobs


# ---- over HTTP, every streaming route ----------------------------------------------------------


@contextmanager
def _server(interval: int) -> Iterator[tuple[str, FakeEngineClient]]:
    """uvicorn on a real socket, where a send that need not wait does not (TestClient's does:
    everything after the first write would go out merged, whatever the interval)."""
    fake = FakeEngineClient()
    settings = Settings(model="fake-gpt2", keep_alive_seconds=5.0, stream_interval=interval)
    app = create_app(settings, fake)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    with running(server) as port:
        yield f"http://127.0.0.1:{port}", fake


def _post(url: str, fake: FakeEngineClient, path: str, body: dict[str, Any]) -> Any:
    r = httpx.post(url + path, json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert fake.worker_running == set() and fake.outputs.requests == {}  # nothing left running
    streamed = r.headers["content-type"].startswith("text/event-stream")
    return sse_events(r.text) if streamed else r.json()


def test_over_http_each_route_writes_at_its_interval() -> None:
    """The fake worker makes one token (one character) a step, and the loop writes between two
    steps. The first chunk holds what came before the stream was attached (a token or two);
    after it, at interval 1 every token is its own chunk, at 4 four tokens go together, and the
    last chunk (the script's end and <|endoftext|>, which has no text) holds at most four."""
    completion = {"prompt": "Hi", "stream": True, "max_tokens": 64}
    chat = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    tgi = {"inputs": "Hi", "parameters": {"max_new_tokens": 64}}
    script = " the quick brown fox"
    for interval in (1, 4):
        with _server(interval) as (url, fake):
            events = _post(url, fake, "/v1/completions", completion)
            chunks = [e["choices"][0] for e in events if e != "[DONE]"]
            completion_texts = [c["text"] for c in chunks]
            events = _post(url, fake, "/v1/chat/completions", chat)
            said = [e["choices"][0]["delta"].get("content", "") for e in events if e != "[DONE]"]
            assert said[0] == ""  # the role's chunk
            for texts, finish in (
                (completion_texts, chunks[-1]["finish_reason"]),
                (said[1:], "stop"),
            ):
                assert "".join(texts) == script and finish == "stop"
                middle, last = texts[1:-1], texts[-1]
                if interval == 1:
                    assert middle == list(script[len(texts[0]) :]) and last == ""
                else:
                    assert all(len(text) == 4 for text in middle), texts
                    assert 1 <= len(last) + 1 <= 4, texts  # + <|endoftext|>

            events = _post(url, fake, "/generate_stream", tgi)  # one event per token, always
            assert [e["token"]["text"] for e in events] == [*script, ""]


def _said(events: list[Any], key: str) -> dict[Any, Any]:
    """What an OpenAI stream said per choice (its text, logprobs, finish) and the usage."""
    said: dict[Any, Any] = {"usage": None}
    for e in events:
        if e == "[DONE]":
            continue
        if e.get("usage") is not None and not e["choices"]:
            said["usage"] = e["usage"]
        for c in e["choices"]:
            mine = said.setdefault(c["index"], {"text": "", "logprobs": [], "finish": None})
            mine["text"] += c[key].get("content", "") if key == "delta" else c[key]
            if c["logprobs"] is not None:
                mine["logprobs"].append(c["logprobs"])
            mine["finish"] = mine["finish"] or c["finish_reason"]
    return said


def _joined(parts: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    return {k: [x for part in parts for x in part[k]] for k in keys}


@pytest.mark.parametrize("interval", [3, 7])
def test_merged_chunks_say_what_the_answer_says(interval: int) -> None:
    """Completions (n=2, echo, logprobs) and chat (n=2, logprobs): a stream written every
    `interval` tokens says, choice by choice, what the non-streamed answer says."""
    completion = {"prompt": "Hi", "max_tokens": 17, "n": 2, "logprobs": 2, "echo": True}
    chat = {
        "messages": [{"role": "user", "content": "Hi"}],
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
    }
    with _server(interval) as (url, fake):
        answer, streamed = _answered_and_streamed(url, fake, "/v1/completions", completion)
        for choice in answer["choices"]:
            mine = streamed[choice["index"]]
            assert (mine["text"], mine["finish"]) == (choice["text"], choice["finish_reason"])
            assert _joined(mine["logprobs"]) == {k: choice["logprobs"][k] for k in _joined([])}
            assert len(mine["logprobs"]) < 17  # fewer chunks than tokens

        answer, streamed = _answered_and_streamed(url, fake, "/v1/chat/completions", chat)
        for choice in answer["choices"]:
            mine = streamed[choice["index"]]
            message = choice["message"]["content"]
            assert (mine["text"], mine["finish"]) == (message, choice["finish_reason"])
            tokens = [t for part in mine["logprobs"] for t in part["content"]]
            assert tokens == choice["logprobs"]["content"]


def _answered_and_streamed(
    url: str, fake: FakeEngineClient, path: str, body: dict[str, Any]
) -> tuple[Any, dict[Any, Any]]:
    """The JSON answer and what the stream said (_said), whose usage must agree."""
    answer = _post(url, fake, path, body)
    streamed_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    streamed = _said(_post(url, fake, path, streamed_body), "delta" if "chat" in path else "text")
    assert streamed["usage"] == answer["usage"]
    return answer, streamed


def test_stream_interval_is_a_setting_with_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2_STREAM_INTERVAL", "8")
    assert Settings(model="fake-gpt2").stream_interval == 8
    monkeypatch.delenv("GPT2_STREAM_INTERVAL")
    assert Settings(model="fake-gpt2").stream_interval == 1
    for bad in (0, 1025):
        with pytest.raises(ValueError, match="stream_interval"):
            Settings(model="fake-gpt2", stream_interval=bad)
