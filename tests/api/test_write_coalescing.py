"""Stream writes: a reader that keeps up writes each event alone; one that is behind joins the
events that are ready into one write (one syscall and one pass through the ASGI send chain per
write, not per token), and no event is lost or reordered either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from app.api.openai_stream import openai_events
from app.api.streams import ChoiceStreams, pumped
from app.engine.protocol import FinishReason, GenerationDelta


def _delta(k: int, last: bool) -> GenerationDelta:
    finish = FinishReason.LENGTH if last else None
    return GenerationDelta("r", f"t{k}", (k,), (), finish, 1, k + 1)


def _text_event(index: int, delta: GenerationDelta) -> bytes:
    return f"data: {delta.text}\n\n".encode()


async def _writes(
    deltas: AsyncIterator[GenerationDelta], writes: list[bytes] | None = None
) -> list[bytes]:
    writes = [] if writes is None else writes
    streams = ChoiceStreams([pumped(lambda: deltas)])
    await streams.start(prime_seconds=1.0)
    events = openai_events(
        streams,
        build_chunk=_text_event,
        keep_alive_seconds=60.0,
        num_choices=1,
        response_id="r",
    )
    async for chunk in events:
        writes.append(chunk)
    return writes


def _expected(n: int) -> bytes:
    return b"".join(f"data: t{k}\n\n".encode() for k in range(n)) + b"data: [DONE]\n\n"


def test_events_ready_at_once_go_out_in_one_write() -> None:
    async def burst() -> AsyncIterator[GenerationDelta]:
        for k in range(5):  # no await between deltas: all are ready when the writer runs
            yield _delta(k, last=k == 4)

    writes = asyncio.run(_writes(burst()))
    assert b"".join(writes) == _expected(5)
    assert len(writes) == 1


def test_a_reader_that_keeps_up_writes_each_event_alone() -> None:
    writes: list[bytes] = []

    async def paced() -> AsyncIterator[GenerationDelta]:
        for k in range(5):
            while len(writes) < k:  # the next delta comes once the writer has written
                await asyncio.sleep(0)
            yield _delta(k, last=k == 4)

    asyncio.run(_writes(paced(), writes))
    assert b"".join(writes) == _expected(5)
    assert len(writes) == 5  # the last one carries [DONE] with the last token
