"""`make compat`'s client adapters: the command lines they build and how they read each client's
report. The reports here are trimmed copies of what guidellm 0.8.1, aiperf 0.13.0,
inference-perf 0.7.0 and the litellm probe wrote in a real run (docs/compat.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.compat import __main__ as runner
from scripts.compat import venvs
from scripts.compat.clients import Target, aiperf, guidellm, inference_perf, litellm

TARGET = Target(
    url="http://127.0.0.1:5555",
    model="gpt2-demo",
    tokenizer=Path("/models/gpt2-demo"),
    context_window=256,
    requests=8,
    concurrency=4,
    prompt_tokens=64,
    output_tokens=16,
)


def _distribution(total: float, count: int) -> dict[str, object]:
    return {"total_sum": total, "count": count, "mean": total / max(count, 1)}


def test_guidellm_totals_come_from_its_metrics_and_errors_include_incomplete() -> None:
    def tokens(ok: float, errored: float) -> dict[str, object]:
        return {
            "successful": _distribution(ok, 6),
            "errored": _distribution(errored, 1),
            "incomplete": _distribution(0, 1),
            "total": _distribution(ok + errored, 8),
        }

    report = {
        "benchmarks": [
            {
                "scheduler_metrics": {
                    "requests_made": {"successful": 6, "errored": 1, "incomplete": 1, "total": 8}
                },
                "metrics": {
                    "prompt_token_count": tokens(438.0, 73.0),
                    "output_token_count": tokens(192.0, 0.0),
                },
            }
        ]
    }
    parsed = guidellm.parse_report(report)
    assert (parsed.requests, parsed.errors) == (8, 2)
    assert (parsed.prompt_tokens, parsed.output_tokens) == (511, 192)


def test_guidellm_command_is_bounded_and_uses_the_local_tokenizer(tmp_path: Path) -> None:
    command = guidellm.Guidellm().command(Path("/env/bin"), TARGET, tmp_path)
    assert command[:2] == ["/env/bin/guidellm", "run"]
    joined = " ".join(command)
    assert "target=http://127.0.0.1:5555,model=gpt2-demo" in joined
    assert "kind=hf_auto,model=/models/gpt2-demo" in joined
    assert "prompt_tokens=64,output_tokens=16" in joined
    assert "kind=max_requests,count=8" in joined and "streams=4" in joined


AIPERF_REPORT = {
    "request_count": {"unit": "requests", "avg": 8.0},
    "total_isl": {"unit": "tokens", "avg": 512.0},
    "total_osl": {"unit": "tokens", "avg": 127.0},  # its own tokenizer, after decoding
    "total_usage_prompt_tokens": {"unit": "tokens", "avg": 512.0},
    "total_usage_completion_tokens": {"unit": "tokens", "avg": 128.0},
    "error_summary": [],
    "was_cancelled": False,
    "is_complete": True,
}


def test_aiperf_compares_the_server_usage_it_summed_and_notes_its_own_count() -> None:
    parsed = aiperf.parse_report(AIPERF_REPORT)
    assert (parsed.requests, parsed.errors) == (8, 0)
    assert (parsed.prompt_tokens, parsed.output_tokens) == (512, 128)
    assert "512 prompt / 127 output" in parsed.notes[0]
    assert parsed.extra_checks == [("run complete", True, "aiperf says the run was cut short")]


def test_aiperf_errors_and_a_cancelled_run_are_failures() -> None:
    report = {
        **AIPERF_REPORT,
        "request_count": {"avg": 6.0},
        "error_summary": [{"error_details": {"code": 422}, "count": 2}],
        "was_cancelled": True,
    }
    parsed = aiperf.parse_report(report)
    assert (parsed.requests, parsed.errors) == (8, 2)
    assert parsed.extra_checks[0][1] is False


def test_aiperf_runs_with_a_local_tokenizer_path_but_no_reachable_hub() -> None:
    client = aiperf.Aiperf()
    env = runner.client_environment(client)
    # aiperf's offline mode rejects a tokenizer directory: it runs "online" with the hub
    # pointed at a closed local port instead.
    assert "HF_HUB_OFFLINE" not in env and "TRANSFORMERS_OFFLINE" not in env
    assert env["HF_ENDPOINT"].startswith("http://127.0.0.1:")
    assert env["HF_DATASETS_OFFLINE"] == "1"
    command = client.command(Path("/env/bin"), TARGET, Path("/out"))
    assert command[command.index("--tokenizer") + 1] == "/models/gpt2-demo"
    assert command[command.index("--request-count") + 1] == "8"


def test_other_clients_run_offline_without_the_projects_pythonpath(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/work/project")
    env = runner.client_environment(guidellm.Guidellm())
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert "PYTHONPATH" not in env


def test_inference_perf_config_is_one_fixed_size_concurrent_stage(tmp_path: Path) -> None:
    command = inference_perf.InferencePerf().command(Path("/env/bin"), TARGET, tmp_path)
    assert command[0] == "/env/bin/inference-perf"
    config = json.loads(Path(command[command.index("--config_file") + 1]).read_text())
    assert config["load"] == {
        "type": "concurrent",
        "stages": [{"num_requests": 8, "concurrency_level": 4}],
        "num_workers": 1,
    }
    assert config["data"]["input_distribution"] == {"min": 64, "max": 64, "mean": 64, "std_dev": 0}
    assert config["data"]["output_distribution"]["max"] == 16
    assert config["server"]["base_url"] == "http://127.0.0.1:5555"
    assert config["tokenizer"]["pretrained_model_name_or_path"] == "/models/gpt2-demo"
    assert config["storage"]["local_storage"]["path"] == str(tmp_path)


def test_inference_perf_report_adds_successes_and_failures() -> None:
    report = {
        "successes": {
            "count": 7,
            "prompt_tokens": {"total": 448.0, "mean": 64.0},
            "output_tokens": {"total": 112.0, "mean": 16.0},
            "output_len": {"mean": 15.625},
            "token_count_mismatches": 0,
            "client_fallback_requests": {"prompt": 0, "output": 1},
        },
        "failures": {"count": 1, "prompt_tokens": {"total": 64.0}, "request_latency": None},
    }
    parsed = inference_perf.parse_report(report)
    assert (parsed.requests, parsed.errors) == (8, 1)
    assert (parsed.prompt_tokens, parsed.output_tokens) == (512, 112)
    assert "own tokenizer" in parsed.notes[0]


def _litellm_report(overflow: dict[str, object]) -> dict[str, object]:
    return {
        "version": "1.110.2",
        "calls": [
            {"call": "text_completion", "prompt_tokens": 9, "completion_tokens": 16},
            {"call": "completion stream", "prompt_tokens": 15, "completion_tokens": 16},
        ],
        "overflow": overflow,
    }


def test_litellm_overflow_as_a_plain_bad_request_is_a_failed_check_not_a_crash() -> None:
    parsed = litellm.parse_report(
        _litellm_report(
            {
                "exception": "BadRequestError",
                "bases": ["BadRequestError", "APIStatusError", "APIError"],
                "status": 422,
                "message": "max_tokens: prompt (15 tokens) + max_tokens (256) = 271 exceeds",
                "is_context_window_error": False,
            }
        )
    )
    assert (parsed.requests, parsed.errors, parsed.expected_rejections) == (3, 0, 1)
    assert (parsed.prompt_tokens, parsed.output_tokens) == (24, 32)
    name, ok, detail = parsed.extra_checks[0]
    assert name == "context overflow" and not ok
    assert "raised BadRequestError (status 422" in detail
    assert "not ContextWindowExceededError" in detail


def test_litellm_overflow_passes_as_context_window_exceeded() -> None:
    parsed = litellm.parse_report(
        _litellm_report(
            {
                "exception": "ContextWindowExceededError",
                "status": 400,
                "is_context_window_error": True,
            }
        )
    )
    assert parsed.extra_checks[0][1] is True
    assert "ContextWindowExceededError" in parsed.notes[-1]


def test_a_litellm_call_that_failed_is_an_error_with_its_reason() -> None:
    report = _litellm_report({"exception": None, "is_context_window_error": False})
    report["calls"].append({"call": "completion hosted_vllm", "error": "APIError: boom"})  # type: ignore[attr-defined]
    parsed = litellm.parse_report(report)
    assert parsed.errors == 1
    assert "completion hosted_vllm: APIError: boom" in parsed.notes
    assert "accepted a request longer than its context window" in parsed.extra_checks[0][2]


def test_the_interpreter_is_the_first_candidate_in_the_clients_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    versions = {"/a/python3": (3, 11), "/b/python3.12": (3, 12), "/c/broken-shim": None}
    monkeypatch.setattr(venvs, "candidate_pythons", lambda: list(versions))
    monkeypatch.setattr(venvs, "python_version", versions.get)
    assert venvs.find_python((3, 10), (3, 13)) == "/a/python3"
    assert venvs.find_python((3, 12), (3, 13)) == "/b/python3.12"
    assert venvs.find_python((3, 14), (3, 15)) is None


def test_an_environment_whose_marker_names_the_requirement_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(venvs, "CACHE", tmp_path)
    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / ".compat-installed").write_text("tool==1.0")

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing is installed again")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert venvs.ensure_venv("tool", "tool==1.0", "python3", tmp_path / "log") == (
        tmp_path / "tool" / "bin"
    )


def _asleep(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_client_that_overruns_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    shell = f"sleep 60 & echo $! > {pid_file}; wait"
    started = time.monotonic()
    status = runner.run_bounded(
        ["sh", "-c", shell], {"PATH": os.environ["PATH"]}, tmp_path, tmp_path / "log", timeout=5
    )
    assert status == "killed after 5 s"
    assert time.monotonic() - started < 30
    child = int(pid_file.read_text())
    # The grandchild got the group's SIGKILL too; its exit is asynchronous, so wait for it
    # (bounded): a `sleep 60` still asleep after 20 s was not killed.
    deadline = time.monotonic() + 20
    while _asleep(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _asleep(child)


def test_a_client_exit_status_is_reported(tmp_path: Path) -> None:
    status = runner.run_bounded(
        [sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path, tmp_path / "log", 30
    )
    assert status == "exit status 3"
    assert (
        runner.run_bounded([sys.executable, "-c", "pass"], {}, tmp_path, tmp_path / "l", 30) == ""
    )


class _StubServer:
    url = "http://127.0.0.1:5555"

    def context_window(self) -> int:
        return 256

    def model_name(self) -> str:
        return "gpt2-demo"


def test_a_workload_longer_than_the_context_window_is_refused_naming_the_flags() -> None:
    args = runner.parse_args(["--prompt-tokens", "200", "--output-tokens", "40"])
    with pytest.raises(runner.TooLong, match=r"--prompt-tokens \(200\) \+ --output-tokens \(40\)"):
        runner.run_all([], _StubServer(), args, Path("/nowhere"))  # type: ignore[arg-type]


def test_bad_sizes_are_refused_at_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        runner.parse_args(["--requests", "0"])
    assert "--requests must be at least 1" in capsys.readouterr().err


def test_with_url_the_running_server_is_used_and_nothing_is_started(tmp_path: Path) -> None:
    args = runner.parse_args(["--url", "http://127.0.0.1:5555/"])
    with runner.serving(args, tmp_path) as server:
        assert type(server) is runner.Server
        assert server.url == "http://127.0.0.1:5555"
    assert list(tmp_path.iterdir()) == []  # no server log: nothing was started
