"""What the paged KV cache buys, in process (no HTTP), on random weights.

    python -m benchmarks.kv_cache_bench capacity   # 256 streams of 32 + 128 tokens at once
    python -m benchmarks.kv_cache_bench ttft       # a 240-token system prompt, cache on vs off

capacity: with the default pool (32768 tokens, the memory of the former 32 slots x 1024), submit
--streams requests of a --prompt-len prompt and --gen-len tokens at once and report the engine's
peak running count (StepStats.num_running), its preemptions and the wall time. How many run at
once depends on the pool's tokens, not on the model, so a small GPT-2 (n_positions 1024) keeps
the run short.

ttft: two engines on the GPT-2 124M shape, one with the prefix cache and one without, each
serving --requests sequential requests that repeat a --system-len-token system prompt followed by
a different --question-len-token question. Rounds alternate between the two (A then B, B then A)
so that the machine's drift hits both alike; the figure is the median time to first token of
each side over every request but each round's first (the cache is cold there for both).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from app.engine import EngineConfig, SamplingParams
from app.engine.worker.llm import LLM
from tests.checkpoints import write_tokenizer


def make_model(directory: Path, shape: str) -> Path:
    torch.manual_seed(0)
    sizes = {"small": {"n_layer": 2, "n_embd": 128, "n_head": 4}, "124m": {}}[shape]
    GPT2LMHeadModel(GPT2Config(initializer_range=0.2, **sizes)).save_pretrained(directory)
    write_tokenizer(directory)
    return directory


def capacity(args: argparse.Namespace, model: Path) -> None:
    llm = LLM(EngineConfig(model=str(model), device="cpu"))
    rng = random.Random(0)
    params = SamplingParams(max_tokens=args.gen_len, temperature=0.0, ignore_eos=True)
    for _ in range(args.streams):
        llm.submit([rng.randrange(50257) for _ in range(args.prompt_len)], params)
    peak = preemptions = steps = 0
    start = time.perf_counter()
    while llm.has_unfinished():
        llm.step()
        stats = llm.last_stats
        if stats is not None:
            peak = max(peak, stats.num_running)
            preemptions += stats.num_preemptions
            steps += 1
    seconds = time.perf_counter() - start
    kv = llm.core.kv
    print(
        f"pool: {kv.num_blocks} blocks x {kv.block_size} tokens = {kv.num_blocks * kv.block_size} "
        f"tokens; max_num_seqs {llm.core.config.max_num_seqs}"
    )
    print(
        f"{args.streams} streams of {args.prompt_len}+{args.gen_len} tokens: peak running "
        f"{peak}, preemptions {preemptions}, {steps} steps, {seconds:.1f} s, "
        f"{args.streams * args.gen_len / seconds:.0f} generated tokens/s"
    )


def ttft(args: argparse.Namespace, model: Path) -> None:
    engines = {
        "prefix-cache": LLM(EngineConfig(model=str(model), device="cpu")),
        "no-prefix-cache": LLM(EngineConfig(model=str(model), device="cpu", prefix_cache=False)),
    }
    rng = random.Random(0)
    system = [rng.randrange(50257) for _ in range(args.system_len)]
    params = SamplingParams(max_tokens=args.gen_len, temperature=0.0, ignore_eos=True)
    for llm in engines.values():  # warm-up on another prompt
        llm.generate([[rng.randrange(50257) for _ in range(args.system_len)]], params)
    samples: dict[str, list[float]] = {name: [] for name in engines}
    cached: dict[str, list[int]] = {name: [] for name in engines}
    names = list(engines)
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            llm = engines[name]
            llm.core.kv.pool.reset_cache()  # each round starts cold
            for i in range(args.requests):
                question = [rng.randrange(50257) for _ in range(args.question_len)]
                (result,) = llm.generate([system + question], params)
                assert result.timings is not None
                if i:  # the first request of a round computes the system prompt for both
                    samples[name].append(result.timings.time_to_first_token)
                    cached[name].append(result.num_cached_tokens)
    med = {name: statistics.median(v) for name, v in samples.items()}
    for name in names:
        print(
            f"{name:>16}: TTFT median {med[name] * 1000:.1f} ms over {len(samples[name])} "
            f"requests, cached tokens median {statistics.median(cached[name]):.0f}"
        )
    print(f"ratio (cache / no cache): {med['prefix-cache'] / med['no-prefix-cache']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["capacity", "ttft"])
    parser.add_argument(
        "--shape", choices=["small", "124m"], help="default: capacity small, ttft 124m"
    )
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--gen-len", type=int, help="default: capacity 128, ttft 4")
    parser.add_argument("--system-len", type=int, default=240)
    parser.add_argument("--question-len", type=int, default=16)
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    shape = args.shape or ("small" if args.mode == "capacity" else "124m")
    if args.gen_len is None:
        args.gen_len = 128 if args.mode == "capacity" else 4
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp), shape)
        (capacity if args.mode == "capacity" else ttft)(args, model)


if __name__ == "__main__":
    main()
