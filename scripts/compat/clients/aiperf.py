"""aiperf (NVIDIA's successor to genai-perf): `aiperf profile` on /v1/completions, streamed,
synthetic prompts of a fixed length built with the demo model's tokenizer.

aiperf counts tokens two ways: by running its own tokenizer over the prompt and the streamed
text (total_isl / total_osl), and by adding up the server's `usage` (total_usage_*). The second
is the server's own figure and must equal /metrics exactly; the first is shown as a note (text
re-tokenized after decoding need not give back the same number of tokens).

aiperf 0.13.0 with HF_HUB_OFFLINE set looks a tokenizer up in the hub cache only and rejects a
local directory (HFValidationError), so it runs without that variable; the hub endpoint is
pointed at a closed local port instead, so nothing can be fetched either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scripts.compat.clients import Target
from scripts.compat.verdict import ClientReport

REPORT = "profile_export_aiperf.json"


class Aiperf:
    name = "aiperf"
    version = "0.13.0"
    requirement = "aiperf==0.13.0"
    python = ((3, 11), (3, 13))

    def command(self, bin_dir: Path, target: Target, out_dir: Path) -> list[str]:
        return [
            str(bin_dir / "aiperf"), "profile",
            "--model", target.model,
            "--url", target.url,
            "--endpoint-type", "completions",
            "--streaming",
            "--tokenizer", str(target.tokenizer),
            "--isl", str(target.prompt_tokens),
            "--osl", str(target.output_tokens),
            "--request-count", str(target.requests),
            "--concurrency", str(target.concurrency),
            "--output-artifact-dir", str(out_dir),
            "--ui-type", "none",
        ]  # fmt: skip

    def environment(self) -> dict[str, str | None]:
        return {
            "HF_HUB_OFFLINE": None,
            "TRANSFORMERS_OFFLINE": None,
            "HF_ENDPOINT": "http://127.0.0.1:9",  # the discard port: nothing listens there
        }

    def read_report(self, out_dir: Path, stdout: str) -> ClientReport:
        return parse_report(json.loads((out_dir / REPORT).read_text()))


def _value(report: dict[str, Any], name: str) -> int | None:
    metric = report.get(name)
    return None if metric is None else round(metric["avg"])


def parse_report(report: dict[str, Any]) -> ClientReport:
    successes = _value(report, "request_count") or 0
    errors = _value(report, "error_request_count") or 0
    errors = max(errors, sum(int(e.get("count", 1)) for e in report.get("error_summary") or []))
    result = ClientReport(
        requests=successes + errors,
        errors=errors,
        prompt_tokens=_value(report, "total_usage_prompt_tokens"),
        output_tokens=_value(report, "total_usage_completion_tokens"),
    )
    complete = bool(report.get("is_complete", True)) and not report.get("was_cancelled")
    result.extra_checks.append(("run complete", complete, "aiperf says the run was cut short"))
    result.notes.append(
        "aiperf's own tokenizer counted "
        f"{_value(report, 'total_isl')} prompt / {_value(report, 'total_osl')} output tokens; "
        f"the totals above are the server's usage, which aiperf sums separately"
    )
    return result
