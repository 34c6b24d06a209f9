"""GPU figures for the README: greedy match rate in half precision, decode step times with and
without CUDA graphs, and tokens/s at 256 concurrent sequences. Needs CUDA.

    python -m benchmarks.gpu_bench --json gpu_bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from app.engine import EngineConfig, SamplingParams
from app.engine.worker.llm import LLM
from benchmarks.engine_bench import make_gpt2_124m
from tests.checkpoints import prefix_match, write_tokenizer


def greedy_match(model_dir: Path, hf: GPT2LMHeadModel, dtype: str) -> float:
    """Fraction of 16x128 greedy tokens equal to transformers fp32 (prefix-wise per prompt)."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 50257, (n,), generator=g).tolist() for n in range(8, 136, 8)]
    llm = LLM(EngineConfig(model=str(model_dir), device="cuda", dtype=dtype, max_num_seqs=16))
    ours = llm.generate(prompts, SamplingParams(max_tokens=128, temperature=0, ignore_eos=True))
    refs = []
    with torch.inference_mode():
        for ids in prompts:
            ref = hf.generate(
                torch.tensor([ids], device="cuda"),
                max_new_tokens=128,
                min_new_tokens=128,
                do_sample=False,
                pad_token_id=50256,
            )
            refs.append(ref[0, len(ids) :].tolist())
    return prefix_match([c.token_ids for c in ours], refs)


def decode_step_ms(model_dir: Path, batch: int, graphs: bool) -> tuple[float, float]:
    """Median decode step (ms) and tokens/s over 64 steps of `batch` sequences."""
    llm = LLM(
        EngineConfig(
            model=str(model_dir),
            device="cuda",
            dtype="auto",
            max_num_seqs=batch,
            max_model_len=256,
            cuda_graphs=graphs,
            cuda_graph_batch_sizes=tuple(sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, batch})),
        )
    )
    for _ in range(batch):
        llm.submit([1] * 32, SamplingParams(max_tokens=200, ignore_eos=True, temperature=0))
    while llm.core.scheduler.waiting or any(not s.is_decoding for s in llm.core.scheduler.running):
        llm.step()
    times = []
    start = time.perf_counter()
    for _ in range(64):
        torch.cuda.synchronize()
        t = time.perf_counter()
        llm.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    return statistics.median(times) * 1e3, batch * 64 / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, object] = {"device": torch.cuda.get_device_name()}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        hf = make_gpt2_124m(model_dir).to("cuda")
        write_tokenizer(model_dir)
        for dtype in ("bfloat16", "float16"):
            results[f"greedy_match_{dtype}"] = greedy_match(model_dir, hf, dtype)
            print(dtype, "greedy match", results[f"greedy_match_{dtype}"], flush=True)
        for batch in (1, 32, 256):
            for graphs in (True, False):
                ms, tps = decode_step_ms(model_dir, batch, graphs)
                key = f"batch{batch}_{'graphs' if graphs else 'eager'}"
                results[key] = {"step_ms": ms, "tokens_per_s": tps}
                print(key, f"step {ms:.2f} ms, {tps:.0f} tok/s", flush=True)
    print("command: python -m benchmarks.gpu_bench")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
