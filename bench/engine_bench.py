"""Engine throughput against transformers' generate, and the machine's matmul ceiling.

GPT-2 124M shape with random weights, in-process, no HTTP. For each batch size B: B prompts of
--prompt-len random tokens, --gen-len greedy tokens each (EOS ignored), timed end to end
(prefill included) for our engine in its default dtype and for GPT2LMHeadModel.generate in fp32
and bf16. The ceiling is one decode step's matrix products alone (an nn.Linear stack with GPT-2
124M's shapes, vocabulary projection included) at batch B: no attention, no Python.

    python -m bench.engine_bench                      # batch 1, 8, 32, 128
    python -m bench.engine_bench --batch 32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
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
from app.engine.llm import LLM
from app.model.matmul import Conv1D, onednn_linear, pack_linear_weight


def make_gpt2_124m(directory: Path) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(initializer_range=0.2)).eval()
    model.save_pretrained(directory)
    return model


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def matmul_ceiling(batch: int, dtype: torch.dtype, backend: str, repeats: int) -> float:
    """Seconds for one decode step's GEMMs alone: 12 x (qkv, proj, fc, proj) + vocabulary."""
    cfg = GPT2Config()
    c = cfg.n_embd
    layers = [Conv1D(c, 3 * c), Conv1D(c, c), Conv1D(c, 4 * c), Conv1D(4 * c, c)] * cfg.n_layer
    for layer in layers:
        layer.to(dtype)
        torch.nn.init.normal_(layer.weight, std=0.02)
        if backend == "onednn":
            layer.use_onednn(batch)
    wte = torch.randn(cfg.vocab_size, c, dtype=dtype) * 0.02
    packed = pack_linear_weight(wte, batch) if backend == "onednn" else None
    inputs = {n: torch.randn(batch, n, dtype=dtype) for n in (c, 4 * c)}

    @torch.inference_mode()
    def step() -> None:
        for layer in layers:
            layer(inputs[layer.weight.shape[0]])
        if packed is not None:
            onednn_linear(inputs[c], packed, None, "none")
        else:
            torch.nn.functional.linear(inputs[c], wte)

    step()
    return median_time(step, max(repeats, 5))


def run(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, object] = {"command": "python -m bench.engine_bench " + shlex.join(sys.argv[1:])}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        hf32 = make_gpt2_124m(model_dir)
        hf16 = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
        from tests.checkpoints import write_tokenizer

        write_tokenizer(model_dir)
        rows = []
        for batch in args.batch:
            g = torch.Generator().manual_seed(batch)
            prompts = torch.randint(0, 50257, (batch, args.prompt_len), generator=g)
            config = EngineConfig(
                model=str(model_dir), device="cpu", dtype=args.dtype, max_num_seqs=batch,
                max_model_len=args.prompt_len + args.gen_len,
                max_num_batched_tokens=max(512, batch),
            )
            llm = LLM(config)
            params = SamplingParams(max_tokens=args.gen_len, temperature=0.0, ignore_eos=True)
            ids = prompts.tolist()
            llm.generate(ids[:1], SamplingParams(max_tokens=2))  # warm-up
            t_ours = median_time(lambda: llm.generate(ids, params), args.repeats)  # noqa: B023
            t_hf32 = median_time(lambda: hf_generate(hf32, prompts, args.gen_len), args.repeats)  # noqa: B023
            t_hf16 = median_time(lambda: hf_generate(hf16, prompts, args.gen_len), args.repeats)  # noqa: B023
            engine_dtype = llm.core.runner.dtype
            t_ceiling = min(
                matmul_ceiling(batch, engine_dtype, "onednn", args.repeats),
                matmul_ceiling(batch, engine_dtype, "torch", args.repeats),
            )
            t_ceiling_torch = matmul_ceiling(batch, engine_dtype, "torch", args.repeats)
            tokens = batch * args.gen_len
            row = {
                "batch": batch,
                "engine_dtype": str(engine_dtype).removeprefix("torch."),
                "engine_gemm": llm.core.runner.gemm,
                "ours_tok_s": tokens / t_ours,
                "hf_fp32_tok_s": tokens / t_hf32,
                "hf_bf16_tok_s": tokens / t_hf16,
                "ceiling_tok_s": batch / t_ceiling,
                "ceiling_torch_gemm_tok_s": batch / t_ceiling_torch,
            }
            row["vs_best_hf"] = row["ours_tok_s"] / max(row["hf_fp32_tok_s"], row["hf_bf16_tok_s"])
            row["of_ceiling"] = row["ours_tok_s"] / row["ceiling_tok_s"]
            rows.append(row)
            print_row(row)
            del llm
        results["rows"] = rows
    return results


HEADER = (f"{'batch':>5} {'ours tok/s':>11} {'HF fp32':>9} {'HF bf16':>9} {'x best HF':>10} "
          f"{'ceiling':>9} {'of ceiling':>10} {'ceiling(torch gemm)':>20}")


def print_row(r: dict[str, object]) -> None:
    print(f"{r['batch']:>5} {r['ours_tok_s']:>11.1f} {r['hf_fp32_tok_s']:>9.1f} "
          f"{r['hf_bf16_tok_s']:>9.1f} {r['vs_best_hf']:>9.2f}x {r['ceiling_tok_s']:>9.1f} "
          f"{r['of_ceiling']:>9.0%} {r['ceiling_torch_gemm_tok_s']:>20.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(HEADER, flush=True)
    results = run(args)
    print("command:", results["command"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
