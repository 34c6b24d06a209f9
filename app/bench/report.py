"""The printed report (a table per target, the metrics cross-check, the comparison) and the JSON
file. Every report starts with the command line that produced it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.bench.metrics_check import CrossCheck
from app.bench.runner import PointResult, TargetResult
from app.bench.stats import PointStats


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def _ratio(ours: float, baseline: float) -> float:
    if math.isnan(ours) or math.isnan(baseline) or baseline == 0:
        return math.nan
    return ours / baseline


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    rule = "  ".join("-" * w for w in widths)
    head = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    return "\n".join([head, rule, *lines])


def _verdict(check: CrossCheck | None) -> str:
    if check is None:
        return "n/a"
    if check.agree is None:
        return "skipped"
    return "agree" if check.agree else "DISAGREE"


POINT_HEADER = (
    "point", "ok", "errors", "out tok/s", "req/s",
    "TTFT p50", "p90", "p99 ms", "ITL p50", "p90", "p99 ms", "E2E p50", "p99 ms", "server check",
)  # fmt: skip


def _point_row(p: PointResult) -> list[str]:
    s = p.stats
    errors = ",".join(f"{k}:{v}" for k, v in s.errors.items()) or "0"
    return [
        p.point.name, str(s.completed), errors,
        f"{s.output_tokens_per_s:.1f}", f"{s.requests_per_s:.2f}",
        _ms(s.ttft.p50), _ms(s.ttft.p90), _ms(s.ttft.p99),
        _ms(s.itl.p50), _ms(s.itl.p90), _ms(s.itl.p99),
        _ms(s.e2e.p50), _ms(s.e2e.p99), _verdict(p.check),
    ]  # fmt: skip


def _check_lines(p: PointResult) -> list[str]:
    check = p.check
    if check is None:
        return []
    head = f"  {p.point.name}: server metrics {_verdict(check)}"
    if check.skipped:
        return [f"{head} ({check.skipped})"]
    counts = f"successes server {check.server_successes} / client {check.client_completed}"
    lines = [f"{head} ({counts})"]
    for c in check.comparisons:
        failed = [name for name, ok in c.checks.items() if not ok]
        lines.append(
            f"    {c.metric:<4} count {c.server_count}/{c.client_count}"
            f"  mean {_ms(c.server_mean)}/{_ms(c.client_mean)} ms"
            f"  p50 {_ms(c.server_p50)} (bucket {_ms(c.server_p50_bucket[0])}-"
            f"{_ms(c.server_p50_bucket[1])})/{_ms(c.client_p50)} ms"
            + (f"  FAILED: {', '.join(failed)}" if failed else "")
        )
    return lines


def comparison(targets: Sequence[TargetResult]) -> list[dict[str, Any]]:
    """Ours (the first target) over each other target, point by point: output tok/s (higher
    is better), median TTFT and median ITL (lower is better)."""
    rows: list[dict[str, Any]] = []
    if not targets:
        return rows
    ours = targets[0]
    for other in targets[1:]:
        for mine, theirs in zip(ours.points, other.points, strict=False):
            a, b = mine.stats, theirs.stats
            rows.append(
                {
                    "baseline": other.target.label,
                    "point": mine.point.name,
                    "output_tok_s_ratio": _ratio(a.output_tokens_per_s, b.output_tokens_per_s),
                    "ttft_p50_ratio": _ratio(a.ttft.p50, b.ttft.p50),
                    "itl_p50_ratio": _ratio(a.itl.p50, b.itl.p50),
                }
            )
    return rows


def render(command: str, workload: dict[str, Any], targets: Sequence[TargetResult]) -> str:
    out = [f"$ {command}", f"workload: {workload}", ""]
    for t in targets:
        out.append(
            f"== {t.target.label}: {t.target.url} (model {t.model or '-'}"
            f", warm-up errors {t.warmup_errors})"
        )
        out.append(_table(POINT_HEADER, [_point_row(p) for p in t.points]))
        failure = t.first_failure()
        if failure is not None:  # why requests fail is the first thing a reader must see
            where, r = failure
            out.append(f"first error: {r.error} {r.detail} ({where})")
        checks = [line for p in t.points for line in _check_lines(p)]
        if checks:
            out += ["server metrics (server/client):", *checks]
        out.append("")
    rows = comparison(targets)
    if rows:
        ours = targets[0].target.label
        out.append(f"== {ours} / baseline (tok/s: higher is better; TTFT, ITL: lower is better)")
        header = ("baseline", "point", "out tok/s x", "TTFT p50 x", "ITL p50 x")
        body = [
            [
                r["baseline"],
                r["point"],
                *(
                    "-" if math.isnan(r[k]) else f"{r[k]:.2f}"
                    for k in ("output_tok_s_ratio", "ttft_p50_ratio", "itl_p50_ratio")
                ),
            ]
            for r in rows
        ]
        out += [_table(header, body), ""]
    return "\n".join(out)


def _request_rows(stats_start: float, p: PointResult) -> list[dict[str, Any]]:
    return [
        {
            "start": r.send_time - stats_start,
            "ttft": r.ttft,
            "latency": r.latency,
            "output_tokens": r.output_tokens,
            "prompt_tokens": r.prompt_tokens,
            "requested_prompt_len": r.requested_prompt_len,
            "requested_output_len": r.requested_output_len,
            "error": r.error,
            **({"detail": r.detail} if r.error else {}),
        }
        for r in p.results
    ]


def _point_json(p: PointResult) -> dict[str, Any]:
    start = min((r.send_time for r in p.results), default=0.0)
    stats: PointStats = p.stats
    return {
        "point": p.point.name,
        "mode": p.point.mode,
        "value": p.point.value,
        "stats": stats.summary(),
        "metrics_check": p.check.summary() if p.check is not None else None,
        "client_cpu_seconds": p.client_cpu_seconds,
        "client_wall_seconds": p.client_wall_seconds,
        "requests": _request_rows(start, p),
    }


def to_json(
    command: str,
    workload: dict[str, Any],
    settings: dict[str, Any],
    targets: Sequence[TargetResult],
) -> dict[str, Any]:
    doc = {
        "command": command,
        "workload": workload,
        "settings": settings,
        "targets": [
            {
                "label": t.target.label,
                "url": t.target.url,
                "model": t.model,
                "warmup_errors": t.warmup_errors,
                "points": [_point_json(p) for p in t.points],
            }
            for t in targets
        ],
        "comparison": comparison(targets),
    }
    clean: dict[str, Any] = _finite(doc)
    return clean


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
