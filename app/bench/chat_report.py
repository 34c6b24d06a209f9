"""The chat workload's report: a table by turn index (the prompt grows turn by turn, so does
the work a server without a prefix cache redoes) with the server's prefix cache hit rate beside
it, and the same in JSON."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from app.bench.chat import ChatResult
from app.bench.prefix_cache import NOT_EXPOSED
from app.bench.report import _finite, _ms, _table, _verdict
from app.bench.stats import PointStats, compute

TURN_HEADER = (
    "turn", "sent", "ok", "errors", "prompt tok",
    "TTFT p50", "p90", "p99 ms", "ITL p50 ms", "E2E p50", "p99 ms",
)  # fmt: skip


def turn_stats(result: ChatResult) -> list[PointStats]:
    """One summary per turn index that any conversation reached."""
    reached = max((len(c.turns) for c in result.conversations), default=0)
    return [compute(result.turn(i)) for i in range(reached)]


def _turn_row(index: int, s: PointStats) -> list[str]:
    errors = ",".join(f"{k}:{v}" for k, v in s.errors.items()) or "0"
    prompt = "-" if s.mean_prompt_tokens is None else f"{s.mean_prompt_tokens:.0f}"
    return [
        str(index + 1), str(s.completed + s.failed), str(s.completed), errors, prompt,
        _ms(s.ttft.p50), _ms(s.ttft.p90), _ms(s.ttft.p99), _ms(s.itl.p50),
        _ms(s.e2e.p50), _ms(s.e2e.p99),
    ]  # fmt: skip


def hit_rate_line(result: ChatResult) -> str:
    if result.prefix_cache is None:
        return f"prefix cache hit rate: {NOT_EXPOSED}"
    # The counters' increase over the run: gpt2_prefix_cache_hits_total / _queries_total.
    return f"prefix cache hit rate: {result.prefix_cache.describe()} over the run"


def stop_lines(result: ChatResult) -> list[str]:
    stopped = [c for c in result.conversations if c.stopped_before is not None]
    if not stopped:
        return []
    where = Counter(c.stopped_before for c in stopped)
    turns = ", ".join(f"{n} before turn {t}" for t, n in sorted(where.items()))
    how = "" if result.exact_counts else " (prompt lengths estimated: the server has no /tokenize)"
    return [
        f"stopped at the context window: {len(stopped)} of {len(result.conversations)} "
        f"conversations ({turns}): e.g. {stopped[0].stop_detail}{how}"
    ]


def render_chat(command: str, results: Sequence[ChatResult]) -> str:
    out = [f"$ {command}"]
    if results:
        out.append(f"workload: {results[0].settings.describe()}")
    out.append("")
    for r in results:
        window = "unknown" if r.max_model_len is None else str(r.max_model_len)
        out.append(
            f"== {r.target.label}: {r.target.url} (model {r.model or '-'}, max_model_len "
            f"{window}, warm-up errors {r.warmup_errors})"
        )
        out.append(_table(TURN_HEADER, [_turn_row(i, s) for i, s in enumerate(turn_stats(r))]))
        out.append(hit_rate_line(r))
        out += stop_lines(r)
        all_turns = compute(r.results)
        out.append(
            f"all turns: {all_turns.completed} ok in {r.wall_seconds:.1f} s, "
            f"{all_turns.output_tokens / r.wall_seconds if r.wall_seconds > 0 else 0.0:.1f} "
            f"output tok/s; server metrics {_verdict(r.check)}"
            + (f" ({r.check.skipped})" if r.check is not None and r.check.skipped else "")
        )
        out.append("")
    return "\n".join(out)


def chat_json(command: str, results: Sequence[ChatResult]) -> dict[str, Any]:
    doc = {
        "command": command,
        "workload": results[0].settings.describe() if results else {},
        "targets": [_target_json(r) for r in results],
    }
    clean: dict[str, Any] = _finite(doc)
    return clean


def _target_json(r: ChatResult) -> dict[str, Any]:
    start = min((t.send_time for t in r.results), default=0.0)
    return {
        "label": r.target.label,
        "url": r.target.url,
        "model": r.model,
        "max_model_len": r.max_model_len,
        "prompt_lengths": "tokenize" if r.exact_counts else "estimated",
        "warmup_errors": r.warmup_errors,
        "wall_seconds": r.wall_seconds,
        "prefix_cache": (
            r.prefix_cache.to_json()
            if r.prefix_cache is not None
            else {"hits": None, "queries": None, "hit_rate": None, "note": NOT_EXPOSED}
        ),
        "turns": [{"turn": i + 1, "stats": s.summary()} for i, s in enumerate(turn_stats(r))],
        "metrics_check": r.check.summary() if r.check is not None else None,
        "conversations": [
            {
                "stopped_before_turn": c.stopped_before,
                "stop_detail": c.stop_detail or None,
                "turns": [
                    {
                        "start": t.send_time - start,
                        "ttft": t.ttft,
                        "latency": t.latency,
                        "prompt_tokens": t.prompt_tokens,
                        "output_tokens": t.output_tokens,
                        "error": t.error,
                        **({"detail": t.detail} if t.error else {}),
                    }
                    for t in c.turns
                ],
            }
            for c in r.conversations
        ],
    }
