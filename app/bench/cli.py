"""`gpt2-serve bench`: sweep concurrency or request rate against one or more OpenAI-compatible
servers and report latency, throughput, errors and (for gpt2-serve) the server's own view.

    gpt2-serve bench --url http://127.0.0.1:8000 --concurrency 1 8 32 --num-requests 200 \\
        --prompt-len 32 --output-len 128 --ignore-eos --json out.json --plot-dir plots
    gpt2-serve bench --url http://127.0.0.1:8000 --baseline-url http://127.0.0.1:8001 \\
        --compare llama.cpp=http://127.0.0.1:8080 --request-rate 1 2 4 --duration 60
    gpt2-serve bench --url http://127.0.0.1:8000 --mixed    # long prompts amid 32 streams
    gpt2-serve bench --url http://127.0.0.1:8000 --chat --chat-conversations 16 \\
        --chat-turns 4 --chat-system-prompt-len 200 --chat-user-len 32 --output-len 32

See docs/bench.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from pathlib import Path

import httpx

from app.bench.chat import ChatResult, ChatSettings, run_chat
from app.bench.chat_report import chat_json, render_chat
from app.bench.client import served_model
from app.bench.metrics_check import Tolerance
from app.bench.mixed import MixedResult, MixedSettings, run_mixed
from app.bench.report import render, to_json, write_json
from app.bench.runner import LoadPoint, RunSettings, Target, TargetResult, run_target
from app.bench.workload import LengthDist, Workload, WorkloadError, load_dataset


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpt2-serve bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t = p.add_argument_group("targets")
    t.add_argument("--url", required=True, help="base URL of the server under test ('ours')")
    t.add_argument("--label", default="ours", help="name of --url in the report")
    t.add_argument("--baseline-url", help="a baseline server, run after --url, named 'baseline'")
    t.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="another OpenAI-compatible server to run the same workload against (repeatable)",
    )
    t.add_argument("--model", help="the 'model' field (default: each server's GET /v1/models)")
    t.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY' to every target")

    load = p.add_argument_group("load (one sweep point per value)")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument(
        "--concurrency", type=_positive_int, nargs="+", metavar="N", help="workers (default 1)"
    )
    mode.add_argument(
        "--request-rate", type=_positive_float, nargs="+", metavar="R", help="Poisson, per second"
    )
    stop = load.add_mutually_exclusive_group()
    stop.add_argument("--num-requests", type=_positive_int, help="measured per point (default 64)")
    stop.add_argument("--duration", type=_positive_float, help="seconds of sending per point")
    load.add_argument("--warmup", type=_non_negative_int, default=2, help="unmeasured requests (2)")
    load.add_argument(
        "--timeout", type=_positive_float, default=120.0, help="seconds per request (120)"
    )
    load.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        help="spread each --concurrency point over this many client processes (1); the "
        "report says how busy each was",
    )

    w = p.add_argument_group("workload")
    prompt = w.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-len", type=_positive_int, help="prompt tokens (default 32)")
    prompt.add_argument(
        "--prompt-len-range",
        type=_positive_int,
        nargs=2,
        metavar=("LO", "HI"),
        help="prompt tokens drawn uniformly from LO..HI",
    )
    prompt.add_argument("--dataset", type=Path, help='JSONL: {"prompt": ..., "output_len": ...}')
    output = w.add_mutually_exclusive_group()
    output.add_argument("--output-len", type=_positive_int, help="max_tokens (default 128)")
    output.add_argument(
        "--output-len-range",
        type=_positive_int,
        nargs=2,
        metavar=("LO", "HI"),
        help="max_tokens drawn uniformly from LO..HI",
    )
    w.add_argument(
        "--shared-prefix-len",
        type=_non_negative_int,
        default=0,
        help="tokens every prompt starts with, before its --prompt-len own (0)",
    )
    w.add_argument("--ignore-eos", action="store_true", help="generate exactly max_tokens")
    w.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    w.add_argument("--seed", type=int, default=0, help="prompts, lengths, arrivals (0)")

    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the full report here")
    out.add_argument("--plot-dir", type=Path, help="write PNG figures here (needs matplotlib)")
    out.add_argument("--no-metrics-check", action="store_true", help="skip /metrics scrapes")
    out.add_argument(
        "--metrics-tolerance",
        type=float,
        nargs=2,
        default=(0.05, 0.10),
        metavar=("SECONDS", "FRACTION"),
        help="client overhead allowed above the server: SECONDS + FRACTION x server value "
        "(0.05 0.10)",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")

    m = p.add_argument_group("mixed load (instead of a sweep; see app/bench/mixed.py)")
    m.add_argument(
        "--mixed",
        action="store_true",
        help="long-prompt probes alone, then amid decoding streams: TTFT and the streams' gaps",
    )
    m.add_argument("--mixed-streams", type=_positive_int, default=32, help="decoding streams (32)")
    m.add_argument("--mixed-probe-len", type=_positive_int, default=512, help="probe prompt (512)")
    m.add_argument("--mixed-probes", type=_positive_int, default=3, help="probes per phase (3)")

    c = p.add_argument_group("multi-turn chat (instead of a sweep; see app/bench/chat.py)")
    c.add_argument(
        "--chat",
        action="store_true",
        help="conversations whose every turn resends the conversation so far: TTFT by turn "
        "and the server's prefix cache hit rate (answers: --output-len)",
    )
    c.add_argument("--chat-conversations", type=_positive_int, default=16, help="run at once (16)")
    c.add_argument(
        "--chat-turns", type=_positive_int, default=4, help="per conversation, one by one (4)"
    )
    c.add_argument(
        "--chat-system-prompt-len",
        type=_non_negative_int,
        default=0,
        help="tokens of a system prompt every conversation starts with (0: none)",
    )
    c.add_argument(
        "--chat-user-len", type=_positive_int, default=32, help="tokens of each user message (32)"
    )
    c.add_argument(
        "--chat-max-model-len",
        type=_positive_int,
        help="the context window a conversation stops at (default: the server's GET /v1/models)",
    )
    return p


# Sweep flags that mean nothing to --chat: refused rather than silently ignored.
_NOT_WITH_CHAT = {
    "mixed": "--mixed",
    "concurrency": "--concurrency",
    "request_rate": "--request-rate",
    "num_requests": "--num-requests",
    "duration": "--duration",
    "prompt_len": "--prompt-len",
    "prompt_len_range": "--prompt-len-range",
    "dataset": "--dataset",
    "shared_prefix_len": "--shared-prefix-len",
    "output_len_range": "--output-len-range",
    "plot_dir": "--plot-dir",
}


def chat_settings_from(args: argparse.Namespace) -> ChatSettings:
    for name, flag in _NOT_WITH_CHAT.items():
        if getattr(args, name):
            raise WorkloadError(
                f"{flag} does not apply to --chat (conversations: --chat-conversations, user "
                "messages: --chat-user-len, system prompt: --chat-system-prompt-len)"
            )
    if args.processes != 1:
        raise WorkloadError("--processes does not apply to --chat (one client process)")
    return ChatSettings(
        conversations=args.chat_conversations,
        turns=args.chat_turns,
        system_prompt_len=args.chat_system_prompt_len,
        user_len=args.chat_user_len,
        output_len=args.output_len or 128,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        warmup=args.warmup,
        timeout=args.timeout,
        seed=args.seed,
        max_model_len=args.chat_max_model_len,
        metrics_check=not args.no_metrics_check,
        tolerance=Tolerance(absolute=args.metrics_tolerance[0], relative=args.metrics_tolerance[1]),
    )


async def _run_chats(targets: list[Target], settings: ChatSettings) -> list[ChatResult]:
    return [await run_chat(target, settings) for target in targets]


def _main_chat(parser: argparse.ArgumentParser, args: argparse.Namespace, command: str) -> int:
    try:
        settings = chat_settings_from(args)
        targets = targets_from(args)
    except WorkloadError as exc:
        parser.error(str(exc))
    results = asyncio.run(_run_chats(targets, settings))
    print(render_chat(command, results), flush=True)
    if args.json is not None:
        write_json(args.json, chat_json(command, results))
        print(f"wrote {args.json}")
    return 0


async def _run_mixed(args: argparse.Namespace) -> MixedResult:
    async with httpx.AsyncClient(timeout=args.timeout, trust_env=False) as client:
        base = args.url.rstrip("/")
        model = args.model or await served_model(client, base)
        settings = MixedSettings(
            streams=args.mixed_streams,
            probe_prompt_len=args.mixed_probe_len,
            probes=args.mixed_probes,
            timeout=args.timeout,
            seed=args.seed,
        )
        return await run_mixed(client, base, model, settings)


def _lengths(fixed: int | None, span: list[int] | None, default: int) -> LengthDist:
    if span is not None:
        return LengthDist(span[0], span[1])
    return LengthDist.fixed(fixed or default)


def workload_from(args: argparse.Namespace) -> Workload:
    output = _lengths(args.output_len, args.output_len_range, 128)
    if args.dataset is not None:
        if args.shared_prefix_len:
            raise WorkloadError("--shared-prefix-len works with synthetic prompts, not --dataset")
        return Workload(output, dataset=tuple(load_dataset(args.dataset)), seed=args.seed)
    return Workload(
        output,
        _lengths(args.prompt_len, args.prompt_len_range, 32),
        seed=args.seed,
        shared_prefix=args.shared_prefix_len,
    )


def targets_from(args: argparse.Namespace) -> list[Target]:
    named = [(args.label, args.url)]
    if args.baseline_url:
        named.append(("baseline", args.baseline_url))
    for item in args.compare:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise WorkloadError(f"--compare wants NAME=URL, got {item!r}")
        named.append((name, url))
    labels = [name for name, _ in named]
    if len(set(labels)) != len(labels):
        raise WorkloadError(f"target names must differ: {labels}")
    for name, url in named:
        if not url.startswith(("http://", "https://")):
            raise WorkloadError(f"{name}: URL must start with http:// or https://, got {url!r}")
    return [Target(name, url, args.model, args.api_key) for name, url in named]


def points_from(args: argparse.Namespace) -> list[LoadPoint]:
    if args.request_rate:
        return [LoadPoint("rate", rate) for rate in args.request_rate]
    return [LoadPoint("concurrency", n) for n in args.concurrency or [1]]


async def _run_all(
    targets: list[Target], points: list[LoadPoint], workload: Workload, settings: RunSettings
) -> list[TargetResult]:
    return [await run_target(target, points, workload, settings) for target in targets]


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = shlex.join(["gpt2-serve", "bench", *argv])
    if args.chat:
        return _main_chat(parser, args, command)
    if args.mixed:
        mixed = asyncio.run(_run_mixed(args))
        print("\n".join([f"$ {command}", *mixed.lines()]), flush=True)
        if args.json is not None:
            write_json(args.json, {"command": command, **mixed.to_json()})
            print(f"wrote {args.json}")
        return 0
    try:
        workload = workload_from(args)
        targets = targets_from(args)
    except (WorkloadError, OSError) as exc:
        parser.error(str(exc))
    if args.plot_dir is not None:
        from app.bench.plots import load_pyplot

        load_pyplot()  # fail before the run, not after it, when matplotlib is missing
    settings = RunSettings(
        num_requests=None if args.duration else (args.num_requests or 64),
        duration=args.duration,
        warmup=args.warmup,
        timeout=args.timeout,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        seed=args.seed,
        metrics_check=not args.no_metrics_check,
        tolerance=Tolerance(absolute=args.metrics_tolerance[0], relative=args.metrics_tolerance[1]),
        progress=not args.no_progress and sys.stderr.isatty(),
        processes=args.processes,
    )
    cpu, wall = time.process_time(), time.monotonic()
    results = asyncio.run(_run_all(targets, points_from(args), workload, settings))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    print(render(command, workload.describe(), results), flush=True)
    # A figure is only the server's if the client had CPU to spare: one core is its ceiling.
    print(f"client CPU: {cpu:.1f} s over {wall:.1f} s ({cpu / wall:.0%} of one core)")
    for target in results:
        for p in target.points:
            busiest = max(p.client_cpu_seconds, default=0.0) / max(p.client_wall_seconds, 1e-9)
            print(
                f"  {target.target.label} {p.point.name}: {len(p.client_cpu_seconds)} client "
                f"process(es), the busiest at {busiest:.0%} of a core"
            )
    if args.json is not None:
        run = {k: v for k, v in vars(settings).items() if k != "tolerance"}
        run["tolerance"] = vars(settings.tolerance)
        doc = to_json(command, workload.describe(), run, results)
        write_json(args.json, {**doc, "client_cpu_seconds": cpu, "client_wall_seconds": wall})
        print(f"wrote {args.json}")
    if args.plot_dir is not None:
        from app.bench.plots import write_plots

        for path in write_plots(args.plot_dir, results, command):
            print(f"wrote {path}")
    return 0
