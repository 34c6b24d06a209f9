"""The speed we promise, over HTTP, in one run: gpt2-serve against the seed-style baseline.

GPT-2 124M shape, random weights, the real GPT-2 tokenizer. In order:
1. gpt2-serve: a concurrency sweep (1 .. 64 streams, 32-token prompts, 128 output tokens,
   EOS ignored) through `gpt2-serve bench`, with its /metrics cross-check;
2. gpt2-serve and the seed-style baseline (baselines/seed_server.py: transformers' generate,
   one request at a time) side by side at 32 streams, one after the other;
3. mixed load on gpt2-serve: 512-token prompts arriving while 32 streams decode;
4. the machine's matrix-multiply ceiling at batch 1 and 32 (benchmarks/engine_bench.py's), with
   no server running.
Then it prints each promise of issue 6 with the measured figure and writes everything (JSON,
the bench reports, PNG plots) under --out.

    python -m benchmarks.serve_bench                       # about 12 minutes on 2 CPU cores
    python -m benchmarks.serve_bench --compare llama=http://127.0.0.1:8081   # plus another server
    python -m benchmarks.serve_bench --quantization int8   # gpt2-serve with its int8 GEMMs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SWEEP = [1, 2, 4, 8, 16, 32, 64]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(args: list[str], ready_path: str, log: Path, timeout: float = 300.0) -> Iterator[str]:
    """Start a server process on a free port; yield its URL once `ready_path` answers 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, *args, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{args} exited with {proc.returncode}; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + ready_path, timeout=2.0).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{args} not ready in {timeout:.0f}s; see {log}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def bench(argv: list[str], json_path: Path) -> dict[str, object]:
    from app.bench.cli import main as bench_main

    code = bench_main([*argv, "--json", str(json_path), "--no-progress"])
    if code != 0:
        raise RuntimeError(f"gpt2-serve bench {shlex.join(argv)} exited with {code}")
    doc: dict[str, object] = json.loads(json_path.read_text())
    return doc


def mixed(url: str) -> dict[str, object]:
    from app.bench.client import served_model
    from app.bench.mixed import MixedSettings, run_mixed

    async def go() -> dict[str, object]:
        async with httpx.AsyncClient(timeout=300.0, trust_env=False) as client:
            model = await served_model(client, url)
            result = await run_mixed(client, url, model, MixedSettings())
        for line in result.lines():
            print(line)
        return result.to_json()

    return asyncio.run(go())


def ceiling(batch: int, model: Path, quantization: str) -> float:
    """Tokens/s of one decode step's matrix products alone at `batch` for the served model's
    shape (fp32, the engine's GEMM path: oneDNN, OpenBLAS for one row; or its int8 GEMMs)."""
    import torch
    from transformers import GPT2Config

    from benchmarks.engine_bench import matmul_ceiling

    cfg = GPT2Config.from_pretrained(model)
    backend = "int8" if quantization == "int8" else "onednn"
    return batch / matmul_ceiling(batch, torch.float32, backend, repeats=5, cfg=cfg)


def point(doc: dict[str, object], label: str, name: str) -> dict[str, object]:
    for target in doc["targets"]:  # type: ignore[attr-defined]
        if target["label"] == label:
            for p in target["points"]:
                if p["point"] == name:
                    return p  # type: ignore[no-any-return]
    raise KeyError((label, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / ".cache" / "gpt2-124m")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=URL")
    parser.add_argument("--sweep-seconds", type=float, default=30.0)
    parser.add_argument("--baseline-requests", type=int, default=32)
    parser.add_argument("--quantization", choices=["none", "int8"], default="none")
    args = parser.parse_args()
    command = shlex.join(
        [sys.executable.rsplit("/", 1)[-1], "-m", "benchmarks.serve_bench", *sys.argv[1:]]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.model / "config.json").exists():
        subprocess.run(
            [sys.executable, "scripts/make_demo_model.py", "--shape", "124m", str(args.model)],
            cwd=ROOT,
            check=True,
        )
    common = ["--prompt-len", "32", "--output-len", "128", "--ignore-eos", "--warmup", "4"]
    ours_cmd = ["-m", "app.cli", "serve", "--model", str(args.model), "--max-num-seqs", "64"]
    ours_cmd += ["--quantization", args.quantization]
    env_note = f"{os.cpu_count()} CPUs"
    results: dict[str, object] = {"command": command, "machine": env_note}

    with server(ours_cmd, "/ready", args.out / "ours.log") as ours:
        sweep = bench(
            [
                "--url",
                ours,
                "--concurrency",
                *map(str, SWEEP),
                "--duration",
                str(args.sweep_seconds),
                *common,
                "--plot-dir",
                str(args.out / "sweep"),
            ],
            args.out / "sweep.json",
        )
        results["mixed"] = mixed(ours)
        with server(
            ["-m", "baselines.seed_server", "--model", str(args.model)],
            "/health",
            args.out / "seed.log",
        ) as seed:
            extra = [f"--compare={c}" for c in args.compare]
            side = bench(
                [
                    "--url",
                    ours,
                    "--baseline-url",
                    seed,
                    *extra,
                    "--concurrency",
                    "32",
                    "--num-requests",
                    str(args.baseline_requests),
                    *common,
                    "--plot-dir",
                    str(args.out / "side-by-side"),
                ],
                args.out / "side_by_side.json",
            )
        if args.compare:  # single stream against the other servers (the seed is one anyway)
            single = bench(
                ["--url", ours, *extra, "--concurrency", "1", "--num-requests", "5", *common],
                args.out / "single_stream.json",
            )
            results["single_stream_compare"] = {
                name: point(single, name, "concurrency=1")["stats"]["output_tokens_per_s"]  # type: ignore[index]
                for name in ("ours", *(c.partition("=")[0] for c in args.compare))
            }
    results["ceiling_tok_s"] = {str(n): ceiling(n, args.model, args.quantization) for n in (1, 32)}

    tok_s = {
        n: point(sweep, "ours", f"concurrency={n}")["stats"]["output_tokens_per_s"]  # type: ignore[index]
        for n in SWEEP
    }
    ours32 = point(side, "ours", "concurrency=32")["stats"]["output_tokens_per_s"]  # type: ignore[index]
    seed32 = point(side, "baseline", "concurrency=32")["stats"]["output_tokens_per_s"]  # type: ignore[index]
    ceil = results["ceiling_tok_s"]
    m = results["mixed"]
    promises = [
        (
            "32 streams: >= 10x the seed-style baseline",
            f"{ours32:.1f} / {seed32:.1f} tok/s",
            ours32 / seed32,
            10.0,
            ">=",
        ),
        (
            "32 streams: >= half the matmul ceiling",
            f"{ours32:.1f} / {ceil['32']:.1f} tok/s",
            ours32 / ceil["32"],
            0.5,
            ">=",
        ),
        (
            "mixed: 512-token prompt TTFT <= 2x idle",
            "busy / idle median TTFT",
            m["ttft_ratio"],
            2.0,
            "<=",
        ),
        (
            "mixed: streams' p99 gap <= 3x p50",
            "p99 during prefill / steady p50",
            m["itl_ratio"],
            3.0,
            "<=",
        ),
        (
            "scaling: tok/s rises from 1 to 64 streams",
            " < ".join(f"{tok_s[n]:.0f}" for n in SWEEP),
            float(all(a < b for a, b in itertools.pairwise(tok_s.values()))),  # 1.0: rises
            1.0,
            ">=",
        ),
    ]
    for name in (c.partition("=")[0] for c in args.compare):
        theirs32 = point(side, name, "concurrency=32")["stats"]["output_tokens_per_s"]  # type: ignore[index]
        promises.append(
            (f"32 streams: >= 2x {name}", f"{ours32:.1f} / {theirs32:.1f} tok/s",
             ours32 / theirs32, 2.0, ">=")
        )  # fmt: skip
        one = results["single_stream_compare"]  # type: ignore[index]
        promises.append(
            (f"single stream: >= {name}", f"{one['ours']:.1f} / {one[name]:.1f} tok/s",
             one["ours"] / one[name], 1.0, ">=")
        )  # fmt: skip
    results["sweep_tok_s"] = tok_s
    results["single_stream_tok_s"] = tok_s[1]
    results["single_stream_ceiling_fraction"] = tok_s[1] / ceil["1"]
    results["promises"] = [
        {
            "promise": p,
            "figures": f,
            "value": v,
            "target": t,
            "met": v >= t if op == ">=" else v <= t,
        }
        for p, f, v, t, op in promises
    ]
    print(f"\n$ {command}")
    for row in results["promises"]:  # type: ignore[attr-defined]
        mark = "met" if row["met"] else "MISSED"
        print(
            f"{row['promise']:<45} {row['figures']:<40} {row['value']:.2f} "
            f"(target {row['target']}) {mark}"
        )
    print(
        f"single stream: {tok_s[1]:.1f} tok/s ({tok_s[1] / ceil['1']:.0%} of the batch-1 ceiling "
        f"{ceil['1']:.1f} tok/s)"
    )
    (args.out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}/summary.json, sweep.json, side_by_side.json and PNG plots")


if __name__ == "__main__":
    main()
