"""Engine configuration: a frozen, validated dataclass. The engine never reads the environment.

Every engine option is declared here once. Each field's metadata carries its help text, its
bounds and its section of the help (`_option`); app/config.py turns the fields into Settings
fields (GPT2_<NAME> in the environment) and app/cli_flags.py turns those into flags (--<name>),
so a field added here is a setting, an environment variable and a flag with no other edit.
`Literal` types are the choices. Stdlib only: the worker process imports this, and nothing here
may pull in pydantic.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
CpuGemm = Literal["auto", "torch", "onednn"]  # see app/model/matmul.py
Quantization = Literal["none", "int8"]


def _option(
    help: str,
    *,
    ge: int | None = None,
    gt: float | None = None,
    le: float | None = None,
    group: str = "engine",
    metavar: str | None = None,
) -> dict[str, Any]:
    """A field's metadata: what it does (the flag's help), its bounds if any, the section
    of `gpt2-serve serve --help` it is listed in ("engine" unless said), and how the flag's
    value is shown there when the type alone does not say (a str with known forms)."""
    metadata: dict[str, Any] = {"help": help, "group": group}
    for name, bound in (("ge", ge), ("gt", gt), ("le", le)):
        if bound is not None:
            metadata[name] = bound
    if metavar is not None:
        metadata["metavar"] = metavar
    return metadata


@dataclass(frozen=True)
class EngineConfig:
    model: str = field(
        metadata=_option(
            "Hugging Face hub id or local directory of a GPT-2 checkpoint", group="model"
        )
    )
    device: str = field(
        default="auto",
        metadata=_option(
            "auto: CUDA when available, else CPU",
            group="model",
            metavar="{auto,cpu,cuda,cuda:N}",
        ),
    )
    dtype: Dtype = field(
        default="auto",
        metadata=_option(
            "weights and activations; auto: bfloat16 (float16 without bf16) on CUDA, "
            "bfloat16 on CPUs with native bf16, float32 on other CPUs",
            group="model",
        ),
    )
    max_num_seqs: int = field(
        default=256,
        metadata=_option(
            "running-batch cap: sequences that hold KV blocks at once (fewer when the blocks "
            "run out)",
            ge=1,
        ),
    )
    max_model_len: int | None = field(
        default=None,
        metadata=_option(
            "longest sequence (prompt + output) in tokens; unset: the model's n_positions "
            "(1024 for GPT-2)",
            ge=2,
        ),
    )
    kv_cache_tokens: int | None = field(
        default=None,
        metadata=_option(
            "KV cache size in tokens (rounded down to whole blocks); unset: 32768 on CPU, "
            "from gpu_memory_utilization on CUDA",
            ge=1,
        ),
    )
    gpu_memory_utilization: float = field(
        default=0.9,
        metadata=_option(
            "CUDA: fraction of the device's memory this worker may use; the KV cache gets what "
            "the weights and a profiled worst-case step leave of it (unless kv_cache_tokens)",
            gt=0.0,
            le=1.0,
        ),
    )
    block_size: int = field(
        default=16,
        metadata=_option(
            "tokens per KV cache block (the unit of allocation and of prefix reuse)", ge=1
        ),
    )
    max_num_batched_tokens: int = field(
        default=512,
        metadata=_option(
            "tokens one step may process (decode tokens + prefill chunks), bounding a step's "
            "latency; at least max_num_seqs",
            ge=1,
        ),
    )
    max_prefill_tokens_while_decoding: int | None = field(
        default=None,
        metadata=_option(
            "tokens long prompts may add to one step while sequences decode, bounding the "
            "inter-token gap a prefill causes; unset: paced from measured step times "
            "(app/engine/core/prefill_pacer.py)",
            ge=1,
        ),
    )
    seed: int = field(default=0, metadata=_option("engine RNG seed for requests that give none"))
    cpu_gemm: CpuGemm = field(
        default="auto",
        metadata=_option(
            "CPU matrix multiplies; auto: oneDNN for float32 when torch has it, torch otherwise "
            "(app/model/matmul.py)"
        ),
    )
    quantization: Quantization = field(
        default="none",
        metadata=_option(
            "int8: int8 weights and per-token int8 activations on CPU (app/model/int8.py); "
            "faster, but no longer equal to the fp32 model",
            group="model",
        ),
    )
    cuda_graphs: bool = field(
        default=True, metadata=_option("capture decode steps as CUDA graphs (CUDA only)")
    )
    async_scheduling: bool = field(
        default=False,
        metadata=_option(
            "schedule and prepare each step while the device still runs the previous one "
            "(vLLM's async scheduling): the host's work per step overlaps the GPU's. Tokens are "
            "the same either way; on CPU nothing runs ahead, so it only adds bookkeeping there"
        ),
    )
    prefix_cache: bool = field(
        default=True,
        metadata=_option(
            "keep full KV blocks after their request ends and reuse them for any later prompt "
            "that starts with the same tokens (system prompts, chat histories, n choices)"
        ),
    )
    cuda_graph_batch_sizes: tuple[int, ...] = field(
        default=(1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256),
        metadata=_option(
            "decode batch sizes captured as CUDA graphs (sizes above max_num_seqs are skipped)"
        ),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            bound = f.metadata.get("ge")
            if bound is not None and value is not None and value < bound:
                raise ValueError(f"invalid {f.name}={value!r}: must be >= {bound}")
            above = f.metadata.get("gt")
            if above is not None and value is not None and value <= above:
                raise ValueError(f"invalid {f.name}={value!r}: must be > {above}")
            top = f.metadata.get("le")
            if top is not None and value is not None and value > top:
                raise ValueError(f"invalid {f.name}={value!r}: must be <= {top}")
            allowed = _choices().get(f.name)
            if allowed is not None and value not in allowed:
                names = [str(a) for a in allowed]
                raise ValueError(
                    f"{f.name} must be {', '.join(names[:-1])} or {names[-1]}, not {value!r}"
                )
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"invalid max_num_batched_tokens={self.max_num_batched_tokens!r}: must be >= "
                f"max_num_seqs={self.max_num_seqs} so every running sequence can decode each step"
            )
        if any(size < 1 for size in self.cuda_graph_batch_sizes):
            raise ValueError(
                f"invalid cuda_graph_batch_sizes={self.cuda_graph_batch_sizes!r}: "
                "sizes must be >= 1"
            )


@functools.cache
def _choices() -> dict[str, tuple[object, ...]]:
    """The allowed values of each field typed with a Literal."""
    hints = typing.get_type_hints(EngineConfig)
    return {
        f.name: typing.get_args(hints[f.name])
        for f in fields(EngineConfig)
        if typing.get_origin(hints[f.name]) is Literal
    }
