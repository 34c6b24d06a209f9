"""`make compat`: real clients, unchanged, against a local server. See docs/compat.md.

    python -m scripts.compat                 # all four; --only NAME to pick, --help for the rest

Installs each client into its own environment under .cache/compat/ (never .venv), starts the
service on the bundled demo model (127.0.0.1, a free port, CPU), runs each client with a small
bounded workload (synthetic prompts, the demo model's local tokenizer, no hub), and checks that
the client saw no error and that the tokens it reports equal what /metrics counted during its
run. One summary line per client; exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from scripts.compat.clients import Client, Target
from scripts.compat.clients.aiperf import Aiperf
from scripts.compat.clients.guidellm import Guidellm
from scripts.compat.clients.inference_perf import InferencePerf
from scripts.compat.clients.litellm import Litellm
from scripts.compat.server import DEMO_MODEL, LocalServer, Server
from scripts.compat.venvs import CACHE, ensure_venv, find_python
from scripts.compat.verdict import Verdict, detail_lines, judge, summary_line

CLIENTS: list[Client] = [Guidellm(), Aiperf(), InferencePerf(), Litellm()]
# Room for what clients add around a synthetic prompt (a chat template, guidellm's prefix).
PROMPT_MARGIN = 32

OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [c.name for c in CLIENTS]
    p = argparse.ArgumentParser(prog="python -m scripts.compat", description=__doc__)
    p.add_argument("--only", action="append", choices=names, help="run this client (repeatable)")
    p.add_argument("--requests", type=int, default=8, help="requests per benchmark client")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument(
        "--client-timeout", type=float, default=300, help="seconds before a client is killed"
    )
    p.add_argument(
        "--url",
        help="use the gpt2-serve already running at this local URL instead of starting one "
        "(nothing else may use it meanwhile: its counters are compared)",
    )
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=DEMO_MODEL,
        help="tokenizer directory the clients load (default: the demo model's)",
    )
    p.add_argument("--work-dir", type=Path, default=None, help="logs and reports (default: new)")
    args = p.parse_args(argv)
    for flag in ("requests", "concurrency", "prompt_tokens", "output_tokens"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def client_environment(client: Client) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OFFLINE)
    for key, value in client.environment().items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_bounded(
    command: list[str], env: dict[str, str], cwd: Path, log: Path, timeout: float
) -> str:
    """Runs a client in its own process group (clients spawn helpers) and kills the whole group
    when it overruns. Returns "" when it exited 0, else what went wrong."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return f"killed after {timeout:.0f} s"
    return "" if code == 0 else f"exit status {code}"


def install(client: Client, work: Path) -> tuple[Path | None, str | None]:
    python = find_python(*client.python)
    if python is None:
        low, high = client.python
        return None, (
            f"needs Python {low[0]}.{low[1]}..{high[0]}.{high[1]} for its environment; none "
            f"found: set COMPAT_PYTHON to such an interpreter"
        )
    print(f"[compat] {client.requirement}: environment in {CACHE / client.name}", flush=True)
    try:
        return ensure_venv(
            client.name, client.requirement, python, work / f"{client.name}.pip.log"
        ), None
    except RuntimeError as exc:
        return None, str(exc).splitlines()[0] + f" (log: {work / f'{client.name}.pip.log'})"


def run_client(
    client: Client, bin_dir: Path, server: Server, target: Target, work: Path, timeout: float
) -> Verdict:
    out_dir = work / client.name
    out_dir.mkdir(parents=True, exist_ok=True)
    log = work / f"{client.name}.log"
    command = client.command(bin_dir, target, out_dir)
    print(f"[compat] running {client.name} {client.version} (log: {log})", flush=True)
    started = time.monotonic()
    before = server.counts()
    failure = run_bounded(command, client_environment(client), out_dir, log, timeout) or None
    after = server.counts()
    print(f"[compat] {client.name} done in {time.monotonic() - started:.0f} s", flush=True)
    try:
        report = client.read_report(out_dir, log.read_text(errors="replace"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report = None
        failure = "; ".join(
            f for f in (failure, f"no readable report ({type(exc).__name__}: {exc})") if f
        )
    if failure:
        failure += f" (log: {log})"
    return judge(client.name, client.version, report, after.minus(before), failure=failure)


class TooLong(Exception):
    """The workload does not fit the model's context window."""


def serving(args: argparse.Namespace, work: Path) -> AbstractContextManager[Server]:
    if args.url:
        print(f"[compat] using the server at {args.url}", flush=True)
        return nullcontext(Server(args.url))
    print("[compat] starting the server on the demo model", flush=True)
    return LocalServer(work / "server.log")


def run_all(
    installed: list[tuple[Client, Path]], server: Server, args: argparse.Namespace, work: Path
) -> list[Verdict]:
    window = server.context_window()
    if args.prompt_tokens + args.output_tokens + PROMPT_MARGIN > window:
        raise TooLong(
            f"--prompt-tokens ({args.prompt_tokens}) + --output-tokens ({args.output_tokens}) "
            f"+ {PROMPT_MARGIN} for templates must fit the model's context window of {window} "
            "tokens"
        )
    target = Target(
        url=server.url,
        model=server.model_name(),
        tokenizer=args.tokenizer,
        context_window=window,
        requests=args.requests,
        concurrency=args.concurrency,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
    )
    return [
        run_client(client, bin_dir, server, target, work, args.client_timeout)
        for client, bin_dir in installed
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [c for c in CLIENTS if not args.only or c.name in args.only]
    work = args.work_dir or CACHE / "runs" / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)

    verdicts: list[Verdict] = []
    installed: list[tuple[Client, Path]] = []
    for client in chosen:
        bin_dir, problem = install(client, work)
        if bin_dir is None:
            verdicts.append(judge(client.name, client.version, None, None, failure=problem))
        else:
            installed.append((client, bin_dir))

    if installed:
        try:
            with serving(args, work) as server:
                verdicts += run_all(installed, server, args, work)
        except TooLong as exc:
            print(exc, file=sys.stderr)
            return 2

    order = {c.name: i for i, c in enumerate(CLIENTS)}
    verdicts.sort(key=lambda v: order[v.name])
    print(f"\n[compat] summary (tokens: client/server; logs and reports in {work})")
    for verdict in verdicts:
        print(summary_line(verdict))
        for line in detail_lines(verdict):
            print(line)
    failed = [v.name for v in verdicts if not v.passed]
    print(f"[compat] {'FAIL: ' + ', '.join(failed) if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
