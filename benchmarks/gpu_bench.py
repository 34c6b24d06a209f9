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
from app.engine.worker.cuda_graphs import StaticDecode
from app.engine.worker.llm import LLM
from benchmarks.engine_bench import make_gpt2_124m
from tests.checkpoints import prefix_match, write_tokenizer

KV_TOKENS = 65536


def greedy_match(model_dir: Path, hf: GPT2LMHeadModel, dtype: str) -> float:
    """Fraction of 16x128 greedy tokens equal to transformers fp32 (prefix-wise per prompt)."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 50257, (n,), generator=g).tolist() for n in range(8, 136, 8)]
    # A fixed pool: the engines of this script live side by side, and sized from the device
    # the first would take 90% of it.
    llm = LLM(
        EngineConfig(
            model=str(model_dir),
            device="cuda",
            dtype=dtype,
            max_num_seqs=16,
            kv_cache_tokens=KV_TOKENS,
        )
    )
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


def decode_step_ms(
    model_dir: Path,
    batch: int,
    graphs: bool,
    async_scheduling: bool = False,
    full_width: bool = False,
) -> dict[str, float]:
    """Decode steps of `batch` sequences: the median step (ms) each timed alone (the device
    synchronised before and after), the mean step and tokens/s over 64 steps back to back (what
    async scheduling overlaps), and the share of a step's wall time the GPU spends in kernels
    (torch.profiler over 20 more steps). full_width: graphs captured at max_model_len only
    (every step attends over 1,024 positions a row), the baseline of the context widths."""
    llm = LLM(
        EngineConfig(
            model=str(model_dir),
            device="cuda",
            dtype="auto",
            max_num_seqs=batch,
            # max_model_len stays the model's 1,024, as the server runs it: graphs attend over
            # the narrowest captured width that holds the step's longest context.
            kv_cache_tokens=max(KV_TOKENS, batch * 256),
            cuda_graphs=graphs,
            cuda_graph_batch_sizes=(batch,),  # every measured step has `batch` rows
            async_scheduling=async_scheduling,
        )
    )
    if full_width:
        runner = llm.core.runner
        top = runner.max_blocks_per_seq
        runner.static_decode = StaticDecode(
            runner.model, runner.kv, [batch], top, capture=True, widths=[top]
        )
    for _ in range(batch):
        llm.submit([1] * 32, SamplingParams(max_tokens=200, ignore_eos=True, temperature=0))
    while llm.core.scheduler.waiting or any(not s.is_decoding for s in llm.core.scheduler.running):
        llm.step()
    times = []
    for _ in range(16):
        torch.cuda.synchronize()
        t = time.perf_counter()
        llm.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(64):
        llm.step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "step_ms": statistics.median(times) * 1e3,
        "step_ms_back_to_back": elapsed / 64 * 1e3,
        "tokens_per_s": batch * 64 / elapsed,
        "gpu_busy": gpu_busy_share(llm, steps=20),
    }


def gpu_busy_share(llm: LLM, steps: int) -> float:
    """Kernel time over wall time across `steps` back-to-back steps (the union of kernel
    intervals, so overlapping streams do not count twice)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            llm.step()
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) * 1e6
    spans = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    busy, end = 0.0, float("-inf")
    for lo, hi in spans:
        if hi <= end:
            continue
        busy += hi - max(lo, end)
        end = hi
    return min(1.0, busy / wall_us)


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
            variants = [("graphs", True, False), ("eager", False, False)]
            variants.append(("graphs_async", True, True))
            if batch > 1:  # one row's attention is too small for its width to show
                variants.append(("graphs_full_width", True, False))
            for key_end, graphs, ahead in variants:
                full = key_end == "graphs_full_width"
                step = decode_step_ms(model_dir, batch, graphs, ahead, full_width=full)
                key = f"batch{batch}_{key_end}"
                results[key] = step
                print(
                    key,
                    f"step {step['step_ms']:.2f} ms alone, "
                    f"{step['step_ms_back_to_back']:.2f} ms back to back, "
                    f"{step['tokens_per_s']:.0f} tok/s, GPU busy {step['gpu_busy']:.0%}",
                    flush=True,
                )
    print("command: python -m benchmarks.gpu_bench")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
