"""Engine throughput against transformers' generate, and the machine's matmul ceiling.

GPT-2 124M shape with random weights, in-process, no HTTP. For each batch size B: B prompts of
--prompt-len random tokens, --gen-len greedy tokens each (EOS ignored), timed end to end
(prefill included) for our engine in its default dtype and for GPT2LMHeadModel.generate in fp32
and bf16. The ceiling is one decode step's matrix products alone (an nn.Linear stack with GPT-2
124M's shapes, vocabulary projection included) at batch B: no attention, no Python.

    python -m benchmarks.engine_bench                      # batch 1, 8, 32, 128
    python -m benchmarks.engine_bench --batch 1 32 --repeats 5  # interleaved pairs, medians
    python -m benchmarks.engine_bench --batch 1 32 --quantization int8   # the opt-in int8 GEMMs
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from app.engine import EngineConfig, SamplingParams
from app.engine.worker.llm import LLM
from app.engine.worker.model_runner import DEFAULT_THREADS
from app.model.gpt2 import GPT2
from app.model.gpt2 import GPT2Config as GPT2ModelConfig
from app.model.matmul import Conv1D
from tests.checkpoints import write_tokenizer


def make_gpt2_124m(directory: Path) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(initializer_range=0.2)).eval()
    model.save_pretrained(directory)
    return model


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def hf_generate(model: GPT2LMHeadModel, prompts: torch.Tensor, gen_len: int) -> None:
    with torch.inference_mode():
        model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=gen_len,
            min_new_tokens=gen_len,
            do_sample=False,
            pad_token_id=50256,
        )


def hf_bf16_time(
    model: GPT2LMHeadModel,
    prompts: torch.Tensor,
    args: argparse.Namespace,
    skip_factor: float | None,
) -> float | None:
    """bf16 generate, timed on a short run and scaled to --gen-len.

    Without native bf16 (AVX512-BF16/AMX) torch converts every bf16 GEMM, and generate ran 15-30x
    slower than fp32 on a 2-core AVX2 machine. A short run shows that; once it has at one batch
    size, larger ones are not run (that would take an hour) and fp32 stays the better baseline.
    """
    if skip_factor is not None:
        return None
    short = min(args.gen_len, args.hf_bf16_gen_len)
    return median_time(lambda: hf_generate(model, prompts, short), args.repeats) * (
        args.gen_len / short
    )


def matmul_ceiling(
    batch: int, dtype: torch.dtype, backend: str, repeats: int, cfg: GPT2Config | None = None
) -> float:
    """Seconds for one decode step's GEMMs alone: n_layer x (qkv, proj, fc, proj) + vocabulary,
    for GPT-2 124M's shape unless `cfg` gives another.

    With backend "onednn" this is the engine's own GEMM path, one-row OpenBLAS included; with
    "int8" the engine's quantization=int8 path (per-row activation quantization included).
    """
    cfg = cfg or GPT2Config()
    model = GPT2(
        GPT2ModelConfig(
            n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head, vocab_size=cfg.vocab_size
        )
    )
    model.to(dtype)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    if backend in ("onednn", "int8"):
        model.set_gemm_backend(backend, batch_hint=batch)
    layers = [m for m in model.modules() if isinstance(m, Conv1D)]
    inputs = {n: torch.randn(batch, n, dtype=dtype) for n in (cfg.n_embd, 4 * cfg.n_embd)}
    threads = torch.get_num_threads()
    if backend == "onednn" and batch == 1:
        torch.set_num_threads(1)  # as the engine's model runner does for one-row steps

    @torch.inference_mode()
    def step() -> None:
        for layer in layers:
            layer(inputs[layer.weight.shape[0]])
        model.compute_logits(inputs[cfg.n_embd])

    try:
        step()
        return median_time(step, max(repeats, 5))
    finally:
        torch.set_num_threads(threads)


def bench_batch(
    batch: int,
    model_dir: Path,
    hf: dict[str, GPT2LMHeadModel],
    args: argparse.Namespace,
    skip_bf16: float | None,
) -> dict[str, object]:
    g = torch.Generator().manual_seed(batch)
    prompts = torch.randint(0, 50257, (batch, args.prompt_len), generator=g)
    config = EngineConfig(
        model=str(model_dir),
        device="cpu",
        dtype=args.dtype,
        quantization=args.quantization,
        max_num_seqs=batch,
        max_model_len=args.prompt_len + args.gen_len,
        max_num_batched_tokens=max(512, batch),
    )
    llm = LLM(config)
    params = SamplingParams(max_tokens=args.gen_len, temperature=0.0, ignore_eos=True)
    ids = prompts.tolist()
    llm.generate(ids[:1], SamplingParams(max_tokens=2))  # warm-up
    # Interleaved, ours then transformers in each repeat: this machine's speed drifts by 10-30%
    # over minutes, and a drift then shifts both sides of a pair alike instead of one side.
    ours_runs, hf32_runs = [], []
    for _ in range(args.repeats):
        ours_runs.append(timed(lambda: llm.generate(ids, params)))
        torch.set_num_threads(DEFAULT_THREADS)  # the engine may have left torch at one thread
        hf32_runs.append(timed(lambda: hf_generate(hf["fp32"], prompts, args.gen_len)))
    t_ours, t_hf32 = statistics.median(ours_runs), statistics.median(hf32_runs)
    t_hf16 = hf_bf16_time(hf["bf16"], prompts, args, skip_bf16)
    # Each pair against transformers' better dtype (bf16, when it runs, is one scaled figure).
    pair_ratios = [
        min(hf, t_hf16 or math.inf) / ours for ours, hf in zip(ours_runs, hf32_runs, strict=True)
    ]
    dtype = llm.core.runner.dtype
    if args.quantization == "int8":  # the ceiling of the kernels int8 runs on
        t_ceiling = matmul_ceiling(batch, dtype, "int8", args.repeats)
    else:
        t_ceiling = min(
            matmul_ceiling(batch, dtype, "onednn", args.repeats),
            matmul_ceiling(batch, dtype, "torch", args.repeats),
        )
    tokens = batch * args.gen_len
    hf_fp32, hf_bf16 = tokens / t_hf32, (tokens / t_hf16 if t_hf16 else None)
    ours = tokens / t_ours
    return {
        "batch": batch,
        "engine_dtype": str(dtype).removeprefix("torch."),
        "engine_gemm": llm.core.runner.gemm,
        "ours_tok_s": ours,
        "hf_fp32_tok_s": hf_fp32,
        "hf_bf16_tok_s": hf_bf16,
        "hf_bf16_vs_fp32": t_hf32 / t_hf16 if t_hf16 else None,
        "vs_best_hf": ours / max(hf_fp32, hf_bf16 or 0.0),
        "vs_best_hf_pairs": pair_ratios,  # one ratio per interleaved repeat
        "ceiling_tok_s": batch / t_ceiling,
        "of_ceiling": ours / (batch / t_ceiling),
        "ceiling_torch_gemm_tok_s": batch / matmul_ceiling(batch, dtype, "torch", args.repeats),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    command = "python -m benchmarks.engine_bench " + shlex.join(sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        hf = {"fp32": make_gpt2_124m(model_dir)}
        hf["bf16"] = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
        write_tokenizer(model_dir)
        skip_bf16: float | None = None
        for batch in args.batch:
            row = bench_batch(batch, model_dir, hf, args, skip_bf16)
            ratio = row["hf_bf16_vs_fp32"]
            if isinstance(ratio, float) and ratio < 0.2:  # bf16 >5x slower: skip larger batches
                skip_bf16 = ratio
            rows.append(row)
            print_row(row)
    return {"command": command, "rows": rows}


HEADER = (
    f"{'batch':>5} {'ours tok/s':>11} {'HF fp32':>9} {'HF bf16':>9} {'x best HF':>10} "
    f"{'pairs':>11} "
    f"{'ceiling':>9} {'of ceiling':>10} {'ceiling(torch gemm)':>20}"
)


def _fmt(value: object) -> str:
    return "skipped" if value is None else f"{value:.1f}"


def _span(ratios: object) -> str:
    """min-max of the per-pair ratios: how far one repeat alone could have strayed."""
    assert isinstance(ratios, list)
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def print_row(r: dict[str, object]) -> None:
    print(
        f"{r['batch']:>5} {r['ours_tok_s']:>11.1f} {r['hf_fp32_tok_s']:>9.1f} "
        f"{_fmt(r['hf_bf16_tok_s']):>9} {r['vs_best_hf']:>9.2f}x "
        f"{_span(r['vs_best_hf_pairs']):>11} {r['ceiling_tok_s']:>9.1f} "
        f"{r['of_ceiling']:>9.0%} {r['ceiling_torch_gemm_tok_s']:>20.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--quantization",
        choices=["none", "int8"],
        default="none",
        help="int8: the engine's int8 GEMMs (not equal to fp32; see benchmarks/quant_bench.py)",
    )
    parser.add_argument(
        "--hf-bf16-gen-len",
        type=int,
        default=4,
        help="tokens for the bf16 transformers run, scaled to --gen-len",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(HEADER, flush=True)
    results = run(args)
    print("command:", results["command"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
