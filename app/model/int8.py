"""Int8 GEMMs for CPUs (W8A8): int8 weights per output channel, int8 activations per row.

Opt-in (`quantization="int8"`): it changes the numbers, so outputs are no longer equal to
transformers' fp32 model; what it costs in agreement is measured in benchmarks/quant_bench.py.
What it buys on a 2-core AVX2 EPYC (GPT-2 124M shapes, benchmarks/engine_bench.py's ceiling: one
decode step's GEMMs alone): through fbgemm (the kernels behind torch's dynamic quantization) the
int8 path ran 1.8x the oneDNN fp32 one at 32 rows (507 against 289 tok/s) and 2x the OpenBLAS
fp32 one at one row (52.6 against 26.4), where its weights are a quarter of the bytes: at one
row fbgemm streamed 8 GB/s against OpenBLAS's 15.

Two choices keep it a serving kernel rather than a demo:
- Activations are quantized per row (per token), never per tensor. With one scale for the whole
  batch, one sequence's outliers would change another's rounding. Per row, and with exact integer
  accumulation, a row's GEMM result is bitwise the same whoever else is in the batch. (The fp32
  parts around it, attention over a batch's padded length above all, are equal only up to float
  order, and int8 rounding can amplify such a difference into another code: greedy tokens of a
  sequence alone and inside a batch agreed on 95.6% of 16x128 tokens on the bundled model,
  against 21% with per-tensor scales and 100% in fp32. benchmarks/quant_bench.py measures it.)
- Per-row scaling is done here, not by fbgemm: each row's [min, max] is mapped onto [0, 127]
  here, and the kernel is called with the fixed input scale 1 and zero point 0, so one kernel
  call serves rows with different scales. The offset comes back as min * (column sums of W).
  Why 127 and not 255: fbgemm's AVX2 kernel adds pairs of u8*s8 products in int16 with
  saturation (vpmaddubsw); 255*127*2 overflows it and silently clips, 127*127*2 fits.

The fbgemm entry points are torch's quantized ops; each packed layer is checked against the fp32
result once, and a build without them gets a clear error instead of a wrong answer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

ACT_LEVELS = 127  # activation codes 0..127; see the module docstring on saturation
_TINY = 1e-12


class Int8Unavailable(RuntimeError):
    """This torch build has no fbgemm int8 linear ops (or they give wrong results)."""


@dataclass(frozen=True)
class Int8Weight:
    packed: Any  # fbgemm LinearPackedParams (a TorchScript object)
    col_sum: torch.Tensor  # (1, out) sum over inputs of the dequantized weight


def int8_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
        torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32"
    )


def quantize_weight(weight: torch.Tensor) -> Int8Weight:
    """weight in F.linear layout (out, in), fp32 -> symmetric int8 per output channel, packed."""
    if not int8_available():
        raise Int8Unavailable("quantization=int8 needs a torch build with fbgemm (x86 CPU)")
    w = weight.detach().float().contiguous()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(_TINY)
    zero_points = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # Quantized tensors are how torch's fbgemm ops take weights; the deprecation warning is
        # about that API's future, which int8_available() and the probe below guard.
        warnings.simplefilter("ignore")
        qweight = torch.quantize_per_channel(w, scale.double(), zero_points, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qweight, None)
    col_sum = qweight.dequantize().sum(dim=1).unsqueeze(0)
    quantized = Int8Weight(packed=packed, col_sum=col_sum)
    _probe(quantized, w)
    return quantized


def int8_linear(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None) -> torch.Tensor:
    """x (M, in) fp32 -> x @ W.T + bias (M, out) fp32, with x quantized row by row.

    One row or many, the same sequence of kernels: any float-order difference between a row
    alone and in a batch would be amplified by the next layer's rounding into different codes.
    (A one-row fast path through fbgemm's own dynamic quantization measured 20% faster at batch 1
    but rounds differently from the batched path, so a sequence's tokens would change with its
    companions. Per-row parameters computed in numpy, to save torch dispatches, measured slower
    than these few torch ops.)
    """
    lo = x.amin(dim=1, keepdim=True)
    scale = (x.amax(dim=1, keepdim=True) - lo).clamp_min_(_TINY).div_(ACT_LEVELS)
    codes = (x - lo).div_(scale)  # each row spans [0, 127]; fbgemm rounds them
    # fbgemm with input scale 1 and zero point 0 returns codes @ W.T
    y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(codes, 1.0, 0, w.packed)
    # x = scale * codes + lo, so x @ W.T = scale * (codes @ W.T) + lo * (column sums of W)
    y = y.mul_(scale) if bias is None else torch.addcmul(bias, y, scale)
    return y.addmm_(lo, w.col_sum)


def _probe(w: Int8Weight, reference: torch.Tensor) -> None:
    """One check per layer that the kernel computes what we think (loose: it is int8)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, reference.shape[1], generator=gen)
    want = x @ reference.t()
    got = int8_linear(x, w, None)
    err = float((got - want).norm() / want.norm().clamp_min(_TINY))
    if not err < 0.05:
        raise Int8Unavailable(f"fbgemm int8 linear is off by {err:.3f} relative; not using it")
