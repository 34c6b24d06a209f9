"""`make compat`'s judgement (scripts/compat/verdict.py, server.parse_samples): what the server
counted, what a client reported, PASS only when they agree. No client and no server needed."""

from __future__ import annotations

from scripts.compat.server import parse_samples
from scripts.compat.verdict import (
    ClientReport,
    ServerCounts,
    counts_from_samples,
    detail_lines,
    judge,
    summary_line,
)

EXPOSITION = """\
# HELP gpt2_prompt_tokens_total Prompt tokens of requests the engine accepted.
# TYPE gpt2_prompt_tokens_total counter
gpt2_prompt_tokens_total 1460.0
gpt2_prompt_tokens_created 1.79e+09
gpt2_generation_tokens_total 640.0
gpt2_request_success_total{finished_reason="stop"} 3.0
gpt2_request_success_total{finished_reason="length"} 20.0
gpt2_request_success_total{finished_reason="abort"} 0.0
gpt2_request_failure_total{reason="validation"} 2.0
gpt2_request_failure_total{reason="timeout"} 0.0
gpt2_request_generation_tokens_sum 640.0
"""


def test_the_exposition_is_read_into_token_and_outcome_counts() -> None:
    counts = counts_from_samples(parse_samples(EXPOSITION))
    assert counts.prompt_tokens == 1460
    assert counts.output_tokens == 640
    assert counts.successes == 23  # every finish reason
    assert counts.failures == {"validation": 2, "timeout": 0}


def test_a_run_is_the_difference_of_two_scrapes_keeping_only_reasons_that_moved() -> None:
    before = ServerCounts(100, 10, 5, {"validation": 1, "timeout": 2})
    after = ServerCounts(164, 26, 6, {"validation": 2, "timeout": 2})
    assert after.minus(before) == ServerCounts(64, 16, 1, {"validation": 1})


def test_equal_totals_and_no_error_pass() -> None:
    verdict = judge("x", "1.0", ClientReport(8, 0, 512, 128), ServerCounts(512, 128, 8))
    assert verdict.passed, verdict.problems
    line = summary_line(verdict)
    assert line.startswith("x ") and line.endswith("PASS")
    assert "512/512" in line and "128/128" in line and "requests   8" in line


def test_a_token_total_that_differs_fails_naming_both_figures() -> None:
    verdict = judge("x", "1.0", ClientReport(8, 0, 512, 127), ServerCounts(512, 128, 8))
    assert not verdict.passed
    assert verdict.problems == ["output tokens: client 127, server 128"]
    assert summary_line(verdict).endswith("FAIL")
    assert detail_lines(verdict) == ["    FAIL: output tokens: client 127, server 128"]


def test_a_figure_the_client_does_not_report_is_not_compared() -> None:
    verdict = judge("x", "1.0", ClientReport(2, 0, None, 32), ServerCounts(20, 32, 2))
    assert verdict.passed, verdict.problems
    assert "-/20" in summary_line(verdict)


def test_client_errors_and_unexpected_server_failures_fail() -> None:
    report = ClientReport(8, 1, 448, 112)
    server = ServerCounts(448, 112, 7, {"overloaded": 1})
    problems = judge("x", "1.0", report, server).problems
    assert "the client reported 1 error(s)" in problems
    assert "server failures {'overloaded': 1}" in problems


def test_successes_must_match_the_server_count() -> None:
    verdict = judge("x", "1.0", ClientReport(8, 0, 0, 0), ServerCounts(0, 0, 6))
    assert verdict.problems == ["successful requests: client 8, server 6"]


def test_a_request_sent_to_be_refused_counts_as_one_validation_failure() -> None:
    report = ClientReport(7, 0, 84, 96, expected_rejections=1)
    assert judge("x", "1", report, ServerCounts(84, 96, 6, {"validation": 1})).passed
    # ...and exactly one: a second refusal is a problem, and so is none.
    assert not judge("x", "1", report, ServerCounts(84, 96, 6, {"validation": 2})).passed
    assert not judge("x", "1", report, ServerCounts(84, 96, 7)).passed


def test_a_failed_extra_check_fails_with_its_detail() -> None:
    report = ClientReport(1, 0, 1, 1, extra_checks=[("overflow", False, "raised Foo")])
    verdict = judge("x", "1", report, ServerCounts(1, 1, 1))
    assert verdict.problems == ["overflow: raised Foo"]


def test_a_client_that_did_not_run_fails_with_the_reason_and_dashes() -> None:
    verdict = judge("x", "1.0", None, None, failure="needs Python 3.12")
    assert verdict.problems == ["needs Python 3.12"]
    line = summary_line(verdict)
    assert "requests   -" in line and "-/-" in line and line.endswith("FAIL")
    assert not judge("x", "1.0", None, ServerCounts()).passed  # ran, but left no report
