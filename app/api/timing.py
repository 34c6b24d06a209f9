"""The engine's RequestTimings as milliseconds: a JSON object and a Server-Timing header."""

from __future__ import annotations

from collections.abc import Sequence

from app.engine.protocol import RequestTimings


def timings_ms(t: RequestTimings) -> dict[str, float]:
    return {
        "queue_ms": _ms(t.queue),
        "ttft_ms": _ms(t.time_to_first_token),
        "decode_ms": _ms(t.decode),
        "total_ms": _ms(t.total),
        "mean_itl_ms": _ms(t.mean_inter_token),
        "max_itl_ms": _ms(t.max_inter_token),
    }


def combine(timings: Sequence[RequestTimings | None]) -> RequestTimings | None:
    """Several choices answer one HTTP request: the caller waited for the slowest of each."""
    known = [t for t in timings if t is not None]
    if not known:
        return None
    if len(known) == 1:
        return known[0]
    return RequestTimings(
        queue=max(t.queue for t in known),
        time_to_first_token=max(t.time_to_first_token for t in known),
        decode=max(t.decode for t in known),
        total=max(t.total for t in known),
        mean_inter_token=sum(t.mean_inter_token for t in known) / len(known),
        max_inter_token=max(t.max_inter_token for t in known),
    )


def server_timing(t: RequestTimings | None) -> dict[str, str]:
    """Server-Timing shows up in browsers' network panels and in curl -i."""
    if t is None:
        return {}
    parts = (
        ("queue", t.queue),
        ("ttft", t.time_to_first_token),
        ("decode", t.decode),
        ("total", t.total),
    )
    return {"Server-Timing": ", ".join(f"{name};dur={_ms(value)}" for name, value in parts)}


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
