"""Device and dtype choice. 'auto' picks what is fastest and numerically safe on the device."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use --device cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 / AMX: bf16 matmuls run natively instead of being converted to fp32."""
    capability = torch.backends.cpu.get_cpu_capability()
    return "AVX512_BF16" in capability or "AMX" in capability


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On CPUs without native bf16, bf16 GEMMs are converted to fp32 and ran 2-4x slower than fp32
    # at batch >= 8 on a 2-core AMD EPYC (AVX2): fp32 is both faster and exact there.
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def inference(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` under torch.inference_mode(), entered only when it is not on already. The worker's
    loop turns it on once (main.py); a decorator entering and leaving it at every step cost the
    step 27-45 µs of CPU there (5 µs in a tight loop, where the caches stay warm)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if torch.is_inference_mode_enabled():
            return fn(*args, **kwargs)
        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapper
