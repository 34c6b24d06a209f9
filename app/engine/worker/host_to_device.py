"""Small host lists to device tensors without stalling the host.

torch.tensor(values, device="cuda") copies from pageable memory, which waits for the stream to
drain: one hidden host synchronisation per call. Staging in pinned memory and copying with
non_blocking=True queues the copy behind the work already enqueued instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def to_device(
    values: Sequence[int] | Sequence[float] | Sequence[bool] | np.ndarray[Any, Any],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """A NumPy array is taken without a copy on CPU (when its dtype already matches)."""
    if isinstance(values, np.ndarray):
        host = torch.from_numpy(values)
        host = host if host.dtype == dtype else host.to(dtype)
    else:
        host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host if device.type == "cpu" else host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
