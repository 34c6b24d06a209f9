"""Host cost per token: CPU seconds each process spends per token served, over HTTP.

On a GPU node the model is cheap and Python is not: what a token costs the HTTP process and the
worker on their way out decides throughput at high concurrency, and it can be measured on any
CPU. This starts gpt2-serve on a tiny random GPT-2 (1 layer, 16 dims, the real 50,257-token
tokenizer: the forward pass is as small as it gets, the detokenizer as real as it gets), drives
it with `gpt2-serve bench` in its own process (32-token prompts, 128 tokens, EOS ignored), and
reads, before and after each load point:

- the HTTP process's CPU seconds (/proc/PID/stat: user + system), per streamed token;
- the worker's CPU seconds, per generated token: all of it, and its host part (the step loop's
  CPU outside the model forward and sampling, gpt2_engine_host_seconds_total);
- tokens from the server's own gpt2_generation_tokens_total.

    python -m benchmarks.host_cost                       # 64 and 256 streams
    python -m benchmarks.host_cost --streams 64 --requests 512 --server-arg=--api-workers=2
    python -m benchmarks.host_cost --model DIR --device cuda --streams 1 32 256 --clients 4
    python -m benchmarks.host_cost --streams 32 --requests 1500 --output-len 2   # per request

--clients N spreads each point's streams over N `gpt2-serve bench` processes (tokens are read
from the server, so they add up by themselves), so a figure is never one Python client's
ceiling in disguise: each row says how busy the busiest client process was.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.bench import metrics_check
from app.bench.stats import percentile
from benchmarks.serve_bench import ROOT, server
from tests.checkpoints import make_checkpoint

TICKS = 100.0  # os.sysconf("SC_CLK_TCK") on Linux


def cpu_seconds(pid: int, which: str = "both") -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / TICKS, int(fields[12]) / TICKS  # utime, stime
    return {"both": user + system, "user": user, "system": system}[which]


def children(pid: int) -> list[int]:
    """Child processes, less multiprocessing's resource tracker (it serves no request)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(p) for p in path.read_text().split()] if path.exists() else []
    return [p for p in found if b"resource_tracker" not in _cmdline(p)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def snapshot(url: str, api_pids: list[int], worker_pid: int) -> dict[str, Any]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {
        "api": sum(cpu_seconds(p) for p in api_pids),
        "api_system": sum(cpu_seconds(p, "system") for p in api_pids),
        "worker": cpu_seconds(worker_pid),
        "host": metric(text, "gpt2_engine_host_seconds_total"),
        "tokens": metric(text, "gpt2_generation_tokens_total"),
        "histograms": metrics_check.parse(text).histograms,
        "time": time.monotonic(),
    }


def latency(before: dict[str, Any], after: dict[str, Any], benches: list[Any]) -> dict[str, float]:
    """Client and server latency of a point, in seconds. TTFT p50 on both sides: the client's
    over every measured request of every client process, the server's from its histogram
    (the point's own traffic, the clients' warm-up requests included; interpolated in its
    bucket as Prometheus does). Inter-token latency from the clients: the median of their p50s
    and the largest of their p99s (each client's own percentiles cannot be merged exactly)."""
    server = {
        key: after["histograms"][name].minus(before["histograms"][name])
        for key, name in metrics_check.HISTOGRAMS.items()
        if key in ("ttft", "itl")
    }
    stats = [b["targets"][0]["points"][0]["stats"] for b in benches]
    ttfts = [
        r["ttft"]
        for b in benches
        for r in b["targets"][0]["points"][0]["requests"]
        if r["error"] is None and r["ttft"] is not None
    ]
    return {
        "client_ttft_p50": percentile(ttfts, 0.5),
        "server_ttft_p50": server["ttft"].quantile(0.5),
        "client_itl_p50": statistics.median(s["itl"]["p50"] for s in stats),
        "client_itl_p99": max(s["itl"]["p99"] for s in stats),
        "server_itl_p50": server["itl"].quantile(0.5),
    }


def run_point(
    url: str,
    streams: int,
    requests: int,
    server_pid: int,
    out: Path,
    clients: int,
    output_len: int = 128,
) -> dict[str, Any]:
    stats = httpx.get(url + "/v1/engine/stats", timeout=10).json()
    worker_pid = int(stats["worker_pid"])
    api_pids = [server_pid] + [p for p in children(server_pid) if p != worker_pid]
    procs = []
    clients = min(clients, streams)  # a client process of no stream has nothing to do
    before = snapshot(url, api_pids, worker_pid)
    for i in range(clients):
        share = streams // clients + (1 if i < streams % clients else 0)
        argv = [
            sys.executable, "-m", "app.cli", "bench", "--url", url, "--concurrency", str(share),
            "--num-requests", str(max(1, requests // clients)), "--warmup", str(share),
            "--prompt-len", "32", "--output-len", str(output_len), "--ignore-eos", "--no-progress",
            "--no-metrics-check", "--json", str(out / f"bench_{streams}_{i}.json"),
        ]  # fmt: skip
        procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True))
    outputs = [p.communicate()[0] for p in procs]
    after = snapshot(url, api_pids, worker_pid)
    for p, text in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"bench failed: {text[-2000:]}")
    tokens = after["tokens"] - before["tokens"]
    served = sum(max(1, requests // clients) for _ in range(clients)) + streams  # and warm-ups
    wall = after["time"] - before["time"]
    benches = [json.loads((out / f"bench_{streams}_{i}.json").read_text()) for i in range(clients)]
    client_cpu = [b.get("client_cpu_seconds") for b in benches]
    busiest = max((c for c in client_cpu if isinstance(c, float)), default=float("nan"))
    return {
        **latency(before, after, benches),
        "streams": streams,
        "clients": clients,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "api_us_per_token": 1e6 * (after["api"] - before["api"]) / tokens,
        "api_us_per_request": 1e6 * (after["api"] - before["api"]) / served,
        "api_system_share": (after["api_system"] - before["api_system"])
        / max(1e-9, after["api"] - before["api"]),
        "worker_us_per_token": 1e6 * (after["worker"] - before["worker"]) / tokens,
        "worker_host_us_per_token": 1e6 * (after["host"] - before["host"]) / tokens,
        "api_busy": (after["api"] - before["api"]) / wall / max(1, len(api_pids)),
        "worker_busy": (after["worker"] - before["worker"]) / wall,
        "client_busy": busiest / wall,
        "api_processes": len(api_pids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--requests", type=int, default=None, help="per point (4 x streams)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra serve flag")
    parser.add_argument("--model", type=Path, help="checkpoint to serve (default: a tiny one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=1, help="bench processes per point")
    parser.add_argument("--output-len", type=int, default=128, help="tokens a request (128)")
    parser.add_argument("--out", type=Path, default=Path(".cache/host_cost"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.host_cost " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or Path(tmp) / "tiny"
        if args.model is None:
            make_checkpoint(model, seed=0, n_layer=1, n_embd=16, n_head=2)
        serve = [
            "-m", "app.cli", "serve", "--model", str(model), "--device", args.device,
            "--max-num-seqs", str(max(args.streams)), "--max-num-batched-tokens", "4096",
            # room for every stream's 32 + 128 tokens (11 blocks): no preemption in the figures
            # (and at least one sequence of GPT-2's 1,024 positions, which the server requires)
            "--kv-cache-tokens", str(max(max(args.streams) * 176, 1024)),
            "--log-level", "WARNING", *args.server_arg,
        ]  # fmt: skip
        rows = []
        with server(serve, "/ready", args.out / "server.log") as url:
            pid = _server_pid(url)
            for streams in args.streams:
                requests = args.requests or 4 * streams
                rows.append(
                    run_point(url, streams, requests, pid, args.out, args.clients, args.output_len)
                )
    print(f"# {command}")
    print(
        "streams  tokens/s  API us/token (kernel)  worker us/token  worker host us/token  "
        "API busy  worker busy  busiest client  API us/request"
    )
    for r in rows:
        print(
            f"{r['streams']:7d}  {r['tokens_per_s']:8.0f}  {r['api_us_per_token']:12.1f} "
            f"({r['api_system_share']:4.0%})  "
            f"{r['worker_us_per_token']:15.1f}  {r['worker_host_us_per_token']:20.1f}  "
            f"{r['api_busy']:8.0%}  {r['worker_busy']:11.0%}  {r['client_busy']:11.0%}  "
            f"{r['api_us_per_request']:14.0f}"
        )
    print(
        "streams  TTFT p50 client / server ms (ratio)  ITL p50 client / server ms  "
        "ITL p99 client ms"
    )
    for r in rows:
        ratio = r["client_ttft_p50"] / r["server_ttft_p50"] if r["server_ttft_p50"] else math.nan
        print(
            f"{r['streams']:7d}  {r['client_ttft_p50'] * 1e3:15.2f} / "
            f"{r['server_ttft_p50'] * 1e3:7.2f} ({ratio:4.2f}x)  "
            f"{r['client_itl_p50'] * 1e3:15.3f} / {r['server_itl_p50'] * 1e3:7.3f}  "
            f"{r['client_itl_p99'] * 1e3:17.2f}"
        )
    (args.out / "host_cost.json").write_text(json.dumps({"command": command, "rows": rows}))


def _server_pid(url: str) -> int:
    """The pid of the process that answers HTTP (the worker's parent)."""
    worker = int(httpx.get(url + "/v1/engine/stats", timeout=10).json()["worker_pid"])
    fields = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])  # ppid


if __name__ == "__main__":
    main()
