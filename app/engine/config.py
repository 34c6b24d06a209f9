"""Engine configuration: a frozen, validated dataclass. The engine never reads the environment."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineConfig:
    model: str
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    # Running-batch cap; also the number of KV slots unless kv_cache_tokens says fewer.
    max_num_seqs: int = 32
    # Context length of one slot; None means the model's n_positions (1024 for GPT-2).
    max_model_len: int | None = None
    # Optional KV budget in tokens: slots = min(max_num_seqs, kv_cache_tokens // max_model_len).
    kv_cache_tokens: int | None = None
    # Tokens one step may process (decode tokens + prefill chunks): bounds a step's latency.
    max_num_batched_tokens: int = 512
    # Tokens long prompts may add to one step while sequences decode: bounds the inter-token gap
    # a long prompt's prefill causes for the running streams. None: paced from measured step
    # times (app/engine/core/prefill_pacer.py); a number fixes it.
    max_prefill_tokens_while_decoding: int | None = None
    seed: int = 0  # engine RNG for requests that give no seed
    cpu_gemm: str = "auto"  # auto | torch | onednn (see app/model/matmul.py)
    # none | int8: int8 weights and per-token int8 activations on CPU (app/model/int8.py).
    # Faster, but no longer equal to the fp32 model; opt-in, like vLLM's --quantization.
    quantization: str = "none"
    cuda_graphs: bool = True
    # Copy a running sequence's cached prompt prefix instead of recomputing it (scheduler.py).
    share_prefixes: bool = True
    cuda_graph_batch_sizes: tuple[int, ...] = field(default=(1, 2, 4, 8, 16, 24, 32, 48, 64))

    def __post_init__(self) -> None:
        checks = {
            "max_num_seqs": self.max_num_seqs >= 1,
            "max_num_batched_tokens": self.max_num_batched_tokens >= self.max_num_seqs,
            "max_model_len": self.max_model_len is None or self.max_model_len >= 2,
            "kv_cache_tokens": self.kv_cache_tokens is None or self.kv_cache_tokens >= 1,
            "max_prefill_tokens_while_decoding": self.max_prefill_tokens_while_decoding is None
            or self.max_prefill_tokens_while_decoding >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"invalid {name}={getattr(self, name)!r} (max_num_seqs={self.max_num_seqs}; "
                    "max_num_batched_tokens must be >= max_num_seqs so every running sequence "
                    "can decode each step)"
                )
        if self.quantization not in ("none", "int8"):
            raise ValueError(f"quantization must be none or int8, not {self.quantization!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                f"dtype must be auto, float32, bfloat16 or float16, not {self.dtype!r}"
            )
