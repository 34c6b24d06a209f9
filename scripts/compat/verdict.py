"""What a client reported, what the server counted, and whether they agree.

Pure: no processes, no network. Each client module turns its client's own report into a
ClientReport; the runner diffs the server's /metrics around the run into a ServerCounts; judge()
compares the two and summary_line() prints one line per client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The /metrics samples the comparison reads (app/metrics.py): tokens move when a request ends.
PROMPT_TOKENS = "gpt2_prompt_tokens_total"
GENERATION_TOKENS = "gpt2_generation_tokens_total"
SUCCESS_PREFIX = "gpt2_request_success_total"
FAILURE_PREFIX = "gpt2_request_failure_total"


@dataclass
class ClientReport:
    """A client's own account of its run. None: the client does not report that figure."""

    requests: int
    errors: int
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    # Extra findings shown under the summary line (a client-side tokenizer's count, the
    # exception a context overflow raised, ...).
    notes: list[str] = field(default_factory=list)
    # Checks beyond errors and tokens that this client's run makes: (name, ok, detail).
    extra_checks: list[tuple[str, bool, str]] = field(default_factory=list)
    # Requests the client sent on purpose to be refused (not counted as server successes).
    expected_rejections: int = 0


@dataclass
class ServerCounts:
    """The server's counters, or the difference of two scrapes."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    successes: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def minus(self, before: ServerCounts) -> ServerCounts:
        reasons = set(self.failures) | set(before.failures)
        return ServerCounts(
            prompt_tokens=self.prompt_tokens - before.prompt_tokens,
            output_tokens=self.output_tokens - before.output_tokens,
            successes=self.successes - before.successes,
            failures={
                r: self.failures.get(r, 0) - before.failures.get(r, 0)
                for r in sorted(reasons)
                if self.failures.get(r, 0) != before.failures.get(r, 0)
            },
        )


def counts_from_samples(samples: dict[str, float]) -> ServerCounts:
    """`samples`: metric sample name, with `{label="value"}` kept as in the exposition text,
    to value. Successes add up over finish reasons; failures are kept per reason."""
    counts = ServerCounts()
    for name, value in samples.items():
        if name == PROMPT_TOKENS:
            counts.prompt_tokens = int(value)
        elif name == GENERATION_TOKENS:
            counts.output_tokens = int(value)
        elif name.startswith(SUCCESS_PREFIX + "{"):
            counts.successes += int(value)
        elif name.startswith(FAILURE_PREFIX + "{"):
            reason = name.split('"')[1]
            counts.failures[reason] = counts.failures.get(reason, 0) + int(value)
    return counts


@dataclass
class Verdict:
    name: str
    version: str
    report: ClientReport | None
    server: ServerCounts | None
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


def judge(
    name: str,
    version: str,
    report: ClientReport | None,
    server: ServerCounts | None,
    *,
    failure: str | None = None,
) -> Verdict:
    """PASS when the client ran (`failure` None), reported no error, and every total it reports
    equals the server's counter moved by the run."""
    problems: list[str] = []
    if failure:
        problems.append(failure)
    if report is not None and server is not None:
        problems += _compare(report, server)
    elif not failure:
        problems.append("no report from the client")
    return Verdict(name, version, report, server, problems)


def _compare(report: ClientReport, server: ServerCounts) -> list[str]:
    problems: list[str] = []
    if report.requests <= 0:
        problems.append("the client completed no request")
    if report.errors:
        problems.append(f"the client reported {report.errors} error(s)")
    for what, ours, theirs in (
        ("prompt tokens", report.prompt_tokens, server.prompt_tokens),
        ("output tokens", report.output_tokens, server.output_tokens),
    ):
        if ours is not None and ours != theirs:
            problems.append(f"{what}: client {ours}, server {theirs}")
    successes = report.requests - report.errors - report.expected_rejections
    if successes != server.successes:
        problems.append(f"successful requests: client {successes}, server {server.successes}")
    unexpected = {r: n for r, n in server.failures.items() if r != "validation" and n}
    rejected = server.failures.get("validation", 0)
    if unexpected or rejected != report.expected_rejections:
        problems.append(f"server failures {server.failures or '{}'}")
    problems += [f"{check}: {detail}" for check, ok, detail in report.extra_checks if not ok]
    return problems


def _pair(client: int | None, server: int | None) -> str:
    return f"{'-' if client is None else client}/{'-' if server is None else server}"


def summary_line(v: Verdict) -> str:
    """One line: name, version, requests, errors, tokens client/server, PASS/FAIL."""
    r, s = v.report, v.server
    prompt = _pair(r.prompt_tokens if r else None, s.prompt_tokens if s else None)
    output = _pair(r.output_tokens if r else None, s.output_tokens if s else None)
    return (
        f"{v.name:<15} {v.version:<9} "
        f"requests {'-' if r is None else r.requests:>3}  "
        f"errors {'-' if r is None else r.errors:>2}  "
        f"prompt tokens {prompt:>11}  output tokens {output:>9}  "
        f"{'PASS' if v.passed else 'FAIL'}"
    )


def detail_lines(v: Verdict) -> list[str]:
    """What follows the summary line: the problems, then the client's notes."""
    notes = v.report.notes if v.report else []
    return [f"    FAIL: {p}" for p in v.problems] + [f"    note: {n}" for n in notes]
