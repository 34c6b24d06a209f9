"""How many KV blocks the worker allocates, and what they allow.

On CPU (or whenever kv_cache_tokens is set) the pool holds kv_cache_tokens tokens: by default
32 x 1024, the memory the former default of 32 full-length slots took. On CUDA it is sized from the
device, as vLLM does: run the worst step the scheduler can produce (max_num_batched_tokens of
prompt, max_num_seqs rows of logits) on the loaded weights, then give the KV cache what is left
of gpu_memory_utilization x the device's memory after everything in use now (weights, CUDA
context, other processes) and that step's transient peak.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from app.engine.config import EngineConfig
from app.model.attention import AttnBatch, KVCache, PrefillChunk, bytes_per_block
from app.model.gpt2 import GPT2

log = logging.getLogger(__name__)
DEFAULT_KV_CACHE_TOKENS = 32 * 1024
# The concurrency log's "typical" sequence: a 32-token prompt and a 128-token answer.
TYPICAL_SEQUENCE_TOKENS = 160


@dataclass(frozen=True)
class Loaded:
    """What sizing needs of the runner: the loaded model and where it runs."""

    model: GPT2
    device: torch.device
    dtype: torch.dtype
    block_size: int
    max_model_len: int


def num_blocks(runner: Loaded, config: EngineConfig) -> int:
    c = runner.model.config
    per_block = bytes_per_block(c.n_layer, c.n_head, c.head_dim, runner.block_size, runner.dtype)
    if config.kv_cache_tokens is not None or runner.device.type != "cuda":
        tokens = config.kv_cache_tokens or DEFAULT_KV_CACHE_TOKENS
        blocks = tokens // runner.block_size
        source = f"kv_cache_tokens={tokens}"
    else:
        available = _profile_free_bytes(runner, config)
        blocks = max(0, available // per_block)
        source = (
            f"gpu_memory_utilization={config.gpu_memory_utilization}: "
            f"{available / 2**30:.2f} GiB left for KV"
        )
    if blocks * runner.block_size < runner.max_model_len:
        raise ValueError(
            f"KV cache of {blocks} blocks x {runner.block_size} tokens ({source}) holds no full "
            f"sequence of max_model_len={runner.max_model_len} tokens: raise kv_cache_tokens or "
            "gpu_memory_utilization, or lower max_model_len"
        )
    log.info(
        "KV cache: %d blocks of %d tokens, %d bytes each (%s)",
        blocks,
        runner.block_size,
        per_block,
        source,
    )
    return blocks


def log_capacity(blocks: int, block_size: int, max_model_len: int) -> None:
    def concurrency(length: int) -> float:
        return blocks / -(-length // block_size)

    log.info(
        "KV cache holds %d tokens: %.1f sequences of %d tokens at once, %.1f at max_model_len=%d",
        blocks * block_size,
        concurrency(TYPICAL_SEQUENCE_TOKENS),
        TYPICAL_SEQUENCE_TOKENS,
        concurrency(max_model_len),
        max_model_len,
    )


@torch.inference_mode()
def _profile_free_bytes(runner: Loaded, config: EngineConfig) -> int:
    """Bytes the KV cache may take on this CUDA device."""
    c = runner.model.config
    device = runner.device
    tokens = min(config.max_num_batched_tokens, runner.max_model_len)
    scratch_blocks = -(-tokens // runner.block_size) + 1
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    scratch = KVCache(
        c.n_layer, scratch_blocks, c.n_head, runner.block_size, c.head_dim, runner.dtype, device
    )
    ids = torch.zeros(tokens, dtype=torch.long, device=device)
    positions = torch.arange(tokens, device=device)
    blocks = torch.arange(1, scratch_blocks, device=device)
    batch = AttnBatch(
        slot_mapping=torch.arange(tokens, device=device) + runner.block_size,
        prefills=[PrefillChunk(0, tokens, blocks)],
    )
    hidden = runner.model(ids, positions, batch, scratch)
    rows = hidden[:1].expand(config.max_num_seqs, -1)
    runner.model.compute_logits(rows).float().softmax(dim=-1)  # the sampler's worst case
    torch.cuda.synchronize(device)
    step_peak = torch.cuda.max_memory_allocated(device) - before
    del scratch, hidden, rows
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    in_use = total - free  # weights, CUDA context, other processes
    available = int(total * config.gpu_memory_utilization) - in_use - step_peak
    log.info(
        "CUDA memory: %.2f GiB total, %.2f GiB in use after loading, worst step %.2f GiB",
        total / 2**30,
        in_use / 2**30,
        step_peak / 2**30,
    )
    return max(0, available)
