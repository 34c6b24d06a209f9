"""Dense layers with the checkpoint's Conv1D layout (weight is [in, out]) and a pluggable GEMM.

On x86 CPUs that are not Intel, the MKL GEMM that torch links runs far below what the cores can do
(a 2-core AMD EPYC, GPT-2 124M shapes at batch 32: 20-45 GFLOP/s). oneDNN's linear kernel with a
pre-packed weight ran 75-90 GFLOP/s on the same shapes and can fuse the tanh-GELU into the GEMM.
It runs on torch's own thread pool, so it does not fight the rest of the step for the cores (as
numpy's OpenBLAS did: fast alone, 3x slower inside a step). The oneDNN entry points are torch
internals (the ones Inductor uses for CPU freezing), so each packed layer is checked against
F.linear once, and anything unexpected falls back to plain torch.

A single row (one sequence decoding alone) is a matrix-vector product bound by memory bandwidth;
there OpenBLAS (through numpy, on zero-copy views) streamed the weights 1.5x faster than oneDNN.
It only pays if torch's threads are not spinning beside OpenBLAS's, so the model runner drops
torch to one thread while such steps run (see ModelRunner._threads_for) and app/__init__.py asks
OpenBLAS not to spin after each call.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.model.int8 import Int8Weight, int8_linear, quantize_weight

log = logging.getLogger(__name__)

GemmBackend = Literal["torch", "onednn", "int8"]
Activation = Literal["none", "gelu_tanh"]


class Conv1D(nn.Module):
    """y = act(x @ weight + bias), with weight stored [in_features, out_features] as in GPT-2."""

    def __init__(
        self, in_features: int, out_features: int, activation: Activation = "none"
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False)
        self.activation = activation
        self._packed: torch.Tensor | None = None  # oneDNN layout of weight.T, when enabled
        self._int8: Int8Weight | None = None  # quantized weight, when quantization=int8

    def use_onednn(self, batch_hint: int) -> bool:
        """Pack the weight for oneDNN; False (and stay on torch) if the result looks wrong."""
        packed = pack_linear_weight(self.weight.t().contiguous(), batch_hint)
        probe = torch.randn(3, self.weight.shape[0], dtype=self.weight.dtype)
        ok = packed is not None and torch.allclose(
            onednn_linear(probe, packed, self.bias, self.activation),
            self._torch_forward(probe),
            rtol=1e-3,
            atol=1e-3,
        )
        self._packed = packed if ok else None
        return ok

    def use_int8(self) -> None:
        self._packed = None
        self._int8 = quantize_weight(self.weight.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, in)
        if self._int8 is not None:
            return self._activate(int8_linear(x, self._int8, self.bias))
        if self._packed is None:
            return self._torch_forward(x)
        if x.shape[0] == 1:
            return self._activate(numpy_mm(x, self.weight).add_(self.bias))
        return onednn_linear(x, self._packed, self.bias, self.activation)

    def _torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._activate(torch.addmm(self.bias, x, self.weight))

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        return F.gelu(y, approximate="tanh") if self.activation == "gelu_tanh" else y


def numpy_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b through numpy's BLAS, on zero-copy views of CPU float32 tensors."""
    return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))


def onednn_available() -> bool:
    built_with_onednn = bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
    return built_with_onednn and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def pack_linear_weight(weight: torch.Tensor, batch_hint: int) -> torch.Tensor | None:
    """weight in F.linear layout (out, in) -> oneDNN's packed layout, or None if unsupported."""
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)
    except (RuntimeError, AttributeError) as exc:
        log.warning("oneDNN weight packing unavailable (%s); using torch GEMMs", exc)
        return None


def onednn_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, activation: Activation
) -> torch.Tensor:
    if activation == "gelu_tanh":
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu", [], "tanh")
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def pick_gemm_backend(
    device: torch.device, dtype: torch.dtype, requested: str, quantization: str = "none"
) -> GemmBackend:
    """'auto' means oneDNN for float32 on CPU when torch has it, torch otherwise; quantization
    int8 means the int8 GEMMs whatever cpu_gemm says, and only where they run."""
    if quantization == "int8":
        if device.type != "cpu" or dtype != torch.float32:
            raise ValueError(
                "quantization=int8 runs on CPU with dtype float32 (fbgemm kernels); "
                f"got device={device}, dtype={dtype}"
            )
        return "int8"
    if requested not in ("auto", "torch", "onednn"):
        raise ValueError(f"cpu_gemm must be auto, torch or onednn, not {requested!r}")
    usable = device.type == "cpu" and dtype == torch.float32 and onednn_available()
    if requested == "onednn" and not usable:
        raise ValueError("cpu_gemm=onednn needs device=cpu, dtype=float32 and a oneDNN build")
    if requested == "auto":
        return "onednn" if usable else "torch"
    return "onednn" if requested == "onednn" else "torch"
