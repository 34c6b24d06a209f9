"""guidellm (vLLM project's benchmark): `guidellm run`, its default chat-completions stream
(`stream_options.include_usage`, `ignore_eos`, `max_completion_tokens`), synthetic prompts
tokenized with the demo model's tokenizer, a fixed number of requests at a fixed concurrency.

Its JSON report counts requests as successful / errored / incomplete and sums the tokens of
each from the usage the server sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scripts.compat.clients import Target
from scripts.compat.verdict import ClientReport

REPORT = "guidellm.json"


class Guidellm:
    name = "guidellm"
    version = "0.8.1"
    requirement = "guidellm==0.8.1"
    python = ((3, 10), (3, 13))

    def command(self, bin_dir: Path, target: Target, out_dir: Path) -> list[str]:
        return [
            str(bin_dir / "guidellm"), "run",
            "--backend", f"kind=openai_http,target={target.url},model={target.model}",
            "--tokenizer", f"kind=hf_auto,model={target.tokenizer}",
            "--data", (
                f"kind=synthetic_text,prompt_tokens={target.prompt_tokens},"
                f"output_tokens={target.output_tokens}"
            ),
            "--profile", f"kind=concurrent,streams={target.concurrency}",
            "--constraint", f"kind=max_requests,count={target.requests}",
            "--output", f"kind=json,path={out_dir / REPORT}",
            "--disable-progress",
        ]  # fmt: skip

    def environment(self) -> dict[str, str | None]:
        return {}

    def read_report(self, out_dir: Path, stdout: str) -> ClientReport:
        return parse_report(json.loads((out_dir / REPORT).read_text()))


def _total(metrics: dict[str, Any], name: str) -> int:
    return round(float(metrics[name]["total"]["total_sum"]))


def parse_report(report: dict[str, Any]) -> ClientReport:
    """Every benchmark in the report (one here) added up."""
    requests = errors = prompt = output = 0
    for benchmark in report["benchmarks"]:
        made = benchmark["scheduler_metrics"]["requests_made"]
        requests += made["total"]
        errors += made["errored"] + made["incomplete"]
        prompt += _total(benchmark["metrics"], "prompt_token_count")
        output += _total(benchmark["metrics"], "output_token_count")
    return ClientReport(requests, errors, prompt, output)
