"""litellm: its Python API (not its proxy), driven by scripts/compat/litellm_probe.py inside
litellm's environment: six calls (text and chat, streamed and not, "openai/" and
"hosted_vllm/" providers) and one context overflow.

The overflow must raise litellm.ContextWindowExceededError: litellm raises it when an
OpenAI-style server answers 400 with code context_length_exceeded / "maximum context length"
wording, and its router's context-window fallbacks key on it. Anything else is reported (the
exception, its status and message) as a failed check, not a crash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scripts.compat.clients import Target
from scripts.compat.verdict import ClientReport

REPORT = "litellm.json"
PROBE = Path(__file__).resolve().parents[1] / "litellm_probe.py"


class Litellm:
    name = "litellm"
    version = "1.110.2"
    requirement = "litellm==1.110.2"
    python = ((3, 9), (3, 13))

    def command(self, bin_dir: Path, target: Target, out_dir: Path) -> list[str]:
        return [
            str(bin_dir / "python"), str(PROBE),
            "--url", target.url,
            "--model", target.model,
            "--max-tokens", str(target.output_tokens),
            "--context-window", str(target.context_window),
            "--out", str(out_dir / REPORT),
        ]  # fmt: skip

    def environment(self) -> dict[str, str | None]:
        return {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}

    def read_report(self, out_dir: Path, stdout: str) -> ClientReport:
        return parse_report(json.loads((out_dir / REPORT).read_text()))


def parse_report(report: dict[str, Any]) -> ClientReport:
    calls = report["calls"]
    failed = [c for c in calls if "error" in c]
    result = ClientReport(
        requests=len(calls) + 1,  # + the overflow call
        errors=len(failed),
        prompt_tokens=sum(c.get("prompt_tokens", 0) for c in calls),
        output_tokens=sum(c.get("completion_tokens", 0) for c in calls),
        expected_rejections=1,
    )
    result.notes += [f"{c['call']}: {c['error']}" for c in failed]
    over = report["overflow"]
    raised = over.get("exception")
    if raised is None:
        detail = "the server accepted a request longer than its context window"
    else:
        detail = (
            f"raised {raised} (status {over.get('status')}, bases "
            f"{', '.join(over.get('bases', []))}), not ContextWindowExceededError: "
            f"{over.get('message', '')[:160]}"
        )
    ok = bool(over.get("is_context_window_error"))
    result.extra_checks.append(("context overflow", ok, detail))
    if ok:
        result.notes.append(f"context overflow raised {raised}, as litellm's router expects")
    return result
