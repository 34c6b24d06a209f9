"""Small host lists to device tensors without stalling the host.

torch.tensor(values, device="cuda") copies from pageable memory, which waits for the stream to
drain: one hidden host synchronisation per call. Staging in pinned memory and copying with
non_blocking=True queues the copy behind the work already enqueued instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(
    values: Sequence[int] | Sequence[float] | Sequence[bool],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host if device.type == "cpu" else host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
