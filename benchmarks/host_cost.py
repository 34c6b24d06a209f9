"""Host cost per token: CPU seconds each process spends per token served, over HTTP.

On a GPU node the model is cheap and Python is not: what a token costs the HTTP process and the
worker on their way out decides throughput at high concurrency, and it can be measured on any
CPU. This starts gpt2-serve on a tiny random GPT-2 (1 layer, 16 dims, the real 50,257-token
tokenizer: the forward pass is as small as it gets, the detokenizer as real as it gets), drives
it with `gpt2-serve bench` in its own process (32-token prompts, 128 tokens, EOS ignored), and
reads, before and after each load point:

- the HTTP processes' CPU seconds (/proc/PID/stat: user + system), per streamed token: the one
  process that owns the worker, or with --api-workers N all N of them (the supervisor's own,
  small, share is reported apart);
- the worker's CPU seconds, per generated token: all of it, and its host part (the step loop's
  CPU outside the model forward and sampling, gpt2_engine_host_seconds_total);
- tokens from the server's own gpt2_generation_tokens_total.

    python -m benchmarks.host_cost                       # 64 and 256 streams
    python -m benchmarks.host_cost --streams 64 --requests 512 --server-arg=--api-workers=2

"API us/token" is the CPU of every HTTP process together per token, "API busy" the mean share of
a core each of them used.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.serve_bench import ROOT, server
from tests.checkpoints import make_checkpoint

TICKS = 100.0  # os.sysconf("SC_CLK_TCK") on Linux


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def is_resource_tracker(pid: int) -> bool:
    """multiprocessing's resource tracker, a child of whoever spawns with multiprocessing."""
    return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()


def server_processes(server_pid: int, worker_pid: int) -> tuple[list[int], list[int]]:
    """(HTTP processes, supervisor): the server process itself when it owns the worker (one
    API process), else its children but the worker (--api-workers: the server is the
    supervisor)."""
    others = [p for p in children(server_pid) if p != worker_pid and not is_resource_tracker(p)]
    return (others, [server_pid]) if others else ([server_pid], [])


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def snapshot(
    url: str, api_pids: list[int], supervisor: list[int], worker_pid: int
) -> dict[str, float]:
    return {
        "api": sum(cpu_seconds(p) for p in api_pids),
        **{f"api {p}": cpu_seconds(p) for p in api_pids},
        "supervisor": sum(cpu_seconds(p) for p in supervisor),
        "worker": cpu_seconds(worker_pid),
        "host": metric(url, "gpt2_engine_host_seconds_total"),
        "tokens": metric(url, "gpt2_generation_tokens_total"),
        "time": time.monotonic(),
    }


def run_point(
    url: str, streams: int, requests: int, server_pid: int, out: Path
) -> dict[str, float]:
    stats = httpx.get(url + "/v1/engine/stats", timeout=10).json()
    worker_pid = int(stats["worker_pid"])
    api_pids, supervisor = server_processes(server_pid, worker_pid)
    argv = [
        sys.executable, "-m", "app.cli", "bench", "--url", url, "--concurrency", str(streams),
        "--num-requests", str(requests), "--warmup", str(streams), "--prompt-len", "32",
        "--output-len", "128", "--ignore-eos", "--no-progress", "--no-metrics-check",
        "--json", str(out / f"bench_{streams}.json"),
    ]  # fmt: skip
    before = snapshot(url, api_pids, supervisor, worker_pid)
    client = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    after = snapshot(url, api_pids, supervisor, worker_pid)
    if client.returncode != 0:
        raise RuntimeError(f"bench failed: {client.stdout[-2000:]}{client.stderr[-2000:]}")
    tokens = after["tokens"] - before["tokens"]
    wall = after["time"] - before["time"]
    report = json.loads((out / f"bench_{streams}.json").read_text())
    client_cpu = report.get("client_cpu_seconds")
    api_cpu = after["api"] - before["api"]
    errors = sum(
        1
        for target in report["targets"]
        for point in target["points"]
        for request in point["requests"]
        if request["error"]
    )
    return {
        "streams": streams,
        "api_processes": len(api_pids),
        # How the HTTP processes shared the work (the kernel spreads connections, not us).
        "api_cpu_shares": [
            round((after[f"api {p}"] - before[f"api {p}"]) / api_cpu, 3) for p in api_pids
        ],
        "errors": errors,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "api_us_per_token": 1e6 * (after["api"] - before["api"]) / tokens,
        "supervisor_us_per_token": 1e6 * (after["supervisor"] - before["supervisor"]) / tokens,
        "worker_us_per_token": 1e6 * (after["worker"] - before["worker"]) / tokens,
        "worker_host_us_per_token": 1e6 * (after["host"] - before["host"]) / tokens,
        "api_busy": (after["api"] - before["api"]) / wall / len(api_pids),  # per process
        "worker_busy": (after["worker"] - before["worker"]) / wall,
        "client_busy": (client_cpu / wall) if isinstance(client_cpu, float) else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--requests", type=int, default=None, help="per point (4 x streams)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra serve flag")
    parser.add_argument("--out", type=Path, default=Path(".cache/host_cost"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.host_cost " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        make_checkpoint(model, seed=0, n_layer=1, n_embd=16, n_head=2)
        serve = [
            "-m", "app.cli", "serve", "--model", str(model), "--device", "cpu",
            "--max-num-seqs", str(max(args.streams)), "--max-num-batched-tokens", "4096",
            "--log-level", "WARNING", *args.server_arg,
        ]  # fmt: skip
        rows = []
        with server(serve, "/ready", args.out / "server.log") as url:
            pid = _server_pid(url)
            for streams in args.streams:
                requests = args.requests or 4 * streams
                rows.append(run_point(url, streams, requests, pid, args.out))
    print(f"# {command}")
    print(
        "streams  API procs  tokens/s  API us/token  worker us/token  worker host us/token  "
        "API busy  worker busy  client busy"
    )
    for r in rows:
        print(
            f"{r['streams']:7d}  {r['api_processes']:9d}  {r['tokens_per_s']:8.0f}  "
            f"{r['api_us_per_token']:12.1f}  {r['worker_us_per_token']:15.1f}  "
            f"{r['worker_host_us_per_token']:20.1f}  {r['api_busy']:8.0%}  "
            f"{r['worker_busy']:11.0%}  {r['client_busy']:11.0%}"
        )
    for r in rows:
        if r["api_processes"] > 1 or r["errors"]:
            shares = " / ".join(f"{s:.0%}" for s in r["api_cpu_shares"])
            print(
                f"{r['streams']} streams: API CPU shares {shares}, supervisor "
                f"{r['supervisor_us_per_token']:.2f} us/token, {r['errors']} failed requests"
            )
    (args.out / "host_cost.json").write_text(json.dumps({"command": command, "rows": rows}))


def _server_pid(url: str) -> int:
    """The worker's parent: the HTTP process, or with --api-workers the supervisor."""
    worker = int(httpx.get(url + "/v1/engine/stats", timeout=10).json()["worker_pid"])
    fields = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])  # ppid


if __name__ == "__main__":
    main()
