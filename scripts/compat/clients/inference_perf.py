"""inference-perf (Kubernetes SIG serving's benchmark): a YAML config with one concurrent stage
against the server as a "vllm" model server, /v1/completions streamed, `ignore_eos`, prompts
sampled from its bundled Shakespeare corpus and cut to a fixed length with the demo model's
tokenizer.

Its summary_lifecycle_metrics.json counts successes and failures and sums prompt and output
tokens from the server's usage (falling back to its own tokenizer per request, which it
counts in client_fallback_requests; shown as a note when non-zero).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scripts.compat.clients import Target
from scripts.compat.verdict import ClientReport

REPORT = "summary_lifecycle_metrics.json"
CONFIG = "inference-perf.json"  # YAML is a superset of JSON: no YAML writer needed here


def config(target: Target, out_dir: Path) -> dict[str, Any]:
    def fixed(n: int) -> dict[str, int]:
        return {"min": n, "max": n, "mean": n, "std_dev": 0}

    return {
        "api": {"type": "completion", "streaming": True},
        "data": {
            "type": "synthetic",
            "input_distribution": fixed(target.prompt_tokens),
            "output_distribution": fixed(target.output_tokens),
        },
        "load": {
            "type": "concurrent",
            "stages": [{"num_requests": target.requests, "concurrency_level": target.concurrency}],
            "num_workers": 1,
        },
        "server": {
            "type": "vllm",
            "model_name": target.model,
            "base_url": target.url,
            "ignore_eos": True,
        },
        "tokenizer": {"pretrained_model_name_or_path": str(target.tokenizer)},
        "storage": {"local_storage": {"path": str(out_dir)}},
        "report": {"request_lifecycle": {"summary": True, "per_stage": False}},
    }


class InferencePerf:
    name = "inference-perf"
    version = "0.7.0"
    requirement = "inference-perf==0.7.0"
    python = ((3, 12), (3, 13))

    def command(self, bin_dir: Path, target: Target, out_dir: Path) -> list[str]:
        path = out_dir / CONFIG
        path.write_text(json.dumps(config(target, out_dir), indent=2))
        return [str(bin_dir / "inference-perf"), "--config_file", str(path)]

    def environment(self) -> dict[str, str | None]:
        return {}

    def read_report(self, out_dir: Path, stdout: str) -> ClientReport:
        return parse_report(json.loads((out_dir / REPORT).read_text()))


def parse_report(report: dict[str, Any]) -> ClientReport:
    successes, failures = report["successes"], report["failures"]
    result = ClientReport(
        requests=int(successes["count"]) + int(failures["count"]),
        errors=int(failures["count"]),
        prompt_tokens=round(successes["prompt_tokens"]["total"] + _total(failures, "prompt")),
        output_tokens=round(successes["output_tokens"]["total"] + _total(failures, "output")),
    )
    fallback = successes.get("client_fallback_requests") or {}
    if any(fallback.values()):
        result.notes.append(f"requests counted with inference-perf's own tokenizer: {fallback}")
    mismatches = successes.get("token_count_mismatches")
    if mismatches:
        result.notes.append(f"token_count_mismatches (server usage vs its tokenizer): {mismatches}")
    return result


def _total(section: dict[str, Any], kind: str) -> float:
    tokens = section.get(f"{kind}_tokens") or {}
    return float(tokens.get("total") or 0.0)
