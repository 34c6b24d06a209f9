"""What quantization=int8 costs in agreement with the fp32 model (speed: engine_bench).

For each model: the fp32 engine's greedy continuations of 16 prompts (128 tokens each) are the
reference. Reported:
- greedy match: the fraction of those tokens the int8 engine reproduces, prefix-wise per prompt
  (after the first difference the contexts differ, so the rest counts as missed);
- teacher-forced top-1: on the reference sequences, how often int8's most likely next token is
  fp32's, and the mean KL(fp32 || int8) in nats, per position;
- alone vs batched: int8 greedy of each prompt run alone against its tokens inside the 16-batch
  (prefix-wise, as above). Quantization rounds each row on its own, but attention's float order
  depends on the batch's padded length, and a rounding can flip. The same for fp32, last.

    python -m benchmarks.quant_bench                    # bundled gpt2-demo and a random 124M shape
    python -m benchmarks.quant_bench --model DIR        # any GPT-2 checkpoint directory
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from app.config import BUNDLED_MODEL
from app.engine import EngineConfig, SamplingParams
from app.engine.worker.llm import LLM
from app.model.weights import load_gpt2, resolve_model_dir
from benchmarks.engine_bench import make_gpt2_124m
from tests.checkpoints import prefix_match, sequence_logits, write_tokenizer

GEN_LEN = 128
NUM_PROMPTS = 16


def prompts_for(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in range(8, 136, 8)]


def greedy(model_dir: Path, quantization: str, prompts: list[list[int]]) -> list[list[int]]:
    llm = LLM(
        EngineConfig(model=str(model_dir), device="cpu", quantization=quantization, max_num_seqs=16)
    )
    params = SamplingParams(max_tokens=GEN_LEN, temperature=0.0, ignore_eos=True)
    return [c.token_ids for c in llm.generate(prompts, params)]


def teacher_forced(model_dir: Path, sequences: list[list[int]]) -> tuple[float, float]:
    fp32 = load_gpt2(model_dir, torch.float32, torch.device("cpu"))
    fp32.set_gemm_backend("onednn")
    int8 = load_gpt2(model_dir, torch.float32, torch.device("cpu"))
    int8.set_gemm_backend("int8")
    agree = kl_sum = count = 0.0
    for ids in sequences:
        ref, got = sequence_logits(fp32, ids), sequence_logits(int8, ids)
        agree += float((ref.argmax(-1) == got.argmax(-1)).sum())
        kl = F.kl_div(got.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="sum")
        kl_sum += float(kl)
        count += len(ids)
    return agree / count, kl_sum / count


def measure(name: str, model_dir: Path, vocab: int) -> dict[str, object]:
    prompts = prompts_for(vocab)
    ref = greedy(model_dir, "none", prompts)
    ours = greedy(model_dir, "int8", prompts)
    alone = [greedy(model_dir, "int8", [p])[0] for p in prompts]
    ref_alone = [greedy(model_dir, "none", [p])[0] for p in prompts]
    top1, kl = teacher_forced(model_dir, [p + r for p, r in zip(prompts, ref, strict=True)])
    row = {
        "model": name,
        "greedy_match": prefix_match(ours, ref),
        "teacher_forced_top1": top1,
        "mean_kl_nats": kl,
        "alone_vs_batched": prefix_match(alone, ours),
        "fp32_alone_vs_batched": prefix_match(ref_alone, ref),
    }
    print(
        f"{name:>14} {row['greedy_match']:>13.1%} {top1:>20.2%} {kl:>10.5f} "
        f"{row['alone_vs_batched']:>17.1%} {row['fp32_alone_vs_batched']:>17.1%}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help="checkpoint dir or name (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    print(
        f"{'model':>14} {'greedy match':>13} {'teacher-forced top-1':>20} {'KL nats':>10} "
        f"{'alone vs batched':>17} {'(fp32: the same)':>17}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            targets = [(m, resolve_model_dir(m)) for m in args.model]
        else:
            make_gpt2_124m(Path(tmp))
            write_tokenizer(Path(tmp))
            targets = [("gpt2-demo", BUNDLED_MODEL), ("random-124M", Path(tmp))]
        for name, model_dir in targets:
            vocab = load_gpt2(model_dir, torch.float32, torch.device("cpu")).config.vocab_size
            rows.append(measure(name, model_dir, vocab))
    command = "python -m benchmarks.quant_bench " + shlex.join(sys.argv[1:])
    print("command:", command)
    if args.json:
        args.json.write_text(json.dumps({"command": command, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
