"""Server settings, read once at the edge from environment variables prefixed GPT2_.

The engine never reads the environment: `to_engine_config` turns these settings into the frozen
EngineConfig it takes. Nothing here imports torch.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.engine.config import EngineConfig

# GPT-2 has no chat format. The default renders each message as "role: content" on its own line
# and ends with "assistant:", a prompt the model continues sensibly. Operators can change both
# strings; the only placeholders are {role} and {content} (str.format, so "{{" is a literal brace).
DEFAULT_CHAT_TEMPLATE = "{role}: {content}\n"
DEFAULT_CHAT_GENERATION_PROMPT = "assistant:"

# A 3.5M-parameter GPT-2 trained on public-domain English (scripts/train_demo_model.py), shipped
# inside the package: the model served when none is named.
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "gpt2-demo"


# Sub-millisecond GPU steps and inter-token gaps up to minutes-long streams, in 1-2.5-5 steps.
DEFAULT_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1200.0,
)  # fmt: skip


class Settings(BaseSettings):
    """Every server option. Environment: GPT2_<NAME>, e.g. GPT2_MAX_NUM_SEQS=64."""

    model_config = SettingsConfigDict(env_prefix="GPT2_", extra="ignore", validate_default=True)

    # --- model and engine -------------------------------------------------------------------
    # Hub id or local directory in Hugging Face format. Unset (or "gpt2-demo"): the small GPT-2
    # bundled with the package (app/models/gpt2-demo, see its README), served offline.
    model: str = str(BUNDLED_MODEL)
    served_model_name: str | None = None  # the name in "model" fields; None: derived from model
    device: str = "auto"
    dtype: str = "auto"
    # int8: int8 weights and per-token int8 activations on CPU, faster and no longer equal to
    # the fp32 model (app/model/int8.py; agreement measured by benchmarks/quant_bench.py).
    quantization: Literal["none", "int8"] = "none"
    max_num_seqs: int = Field(default=32, ge=1)
    max_model_len: int | None = Field(default=None, ge=2)
    kv_cache_tokens: int | None = Field(default=None, ge=1)
    max_num_batched_tokens: int = Field(default=512, ge=1)
    # While streams decode, long prompts add at most this many tokens to a step (see the
    # scheduler). None: paced from measured step times (app/engine/core/prefill_pacer.py).
    max_prefill_tokens_while_decoding: int | None = Field(default=None, ge=1)
    seed: int = 0
    cuda_graphs: bool = True
    # Prompts that start like a running sequence's (n choices, a shared system prompt) copy its
    # cached keys/values instead of recomputing them (see the scheduler).
    share_prefixes: bool = True

    # --- admission (reject early with 429 rather than queue forever) -------------------------
    max_queued_requests: int = Field(default=256, ge=1)
    max_queued_tokens: int = Field(default=262144, ge=1)

    # --- HTTP ---------------------------------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    api_key: str | None = None
    api_key_file: Path | None = None  # one key per line; blank lines and "#" comments ignored
    # Empty list: no CORS headers at all. From the environment: a JSON list or comma-separated.
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_request_body_bytes: int = Field(default=1024 * 1024, ge=1)
    log_prompts: bool = False  # prompts can hold personal data: off unless asked for
    drain_timeout_seconds: float = Field(default=30.0, ge=0)
    keep_alive_seconds: float = Field(
        default=15.0, gt=0
    )  # SSE comment lines while a stream is idle

    # --- observability ------------------------------------------------------------------------
    log_format: Literal["json", "text"] = "json"  # json: one object per line; text: for humans
    log_level: str = "INFO"
    # Buckets (seconds) of every latency histogram: TTFT, inter-token, end-to-end, queue,
    # prefill, decode and engine step. From the environment: a JSON list or comma-separated.
    latency_buckets: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_LATENCY_BUCKETS)
    )

    # --- chat -----------------------------------------------------------------------------------
    chat_template: str = DEFAULT_CHAT_TEMPLATE  # applied to each message: {role}, {content}
    chat_generation_prompt: str = DEFAULT_CHAT_GENERATION_PROMPT  # appended after the messages

    @field_validator("model")
    @classmethod
    def _bundled_alias(cls, value: str) -> str:
        # "gpt2-demo" names the bundled model wherever the package is installed (an image, say).
        return str(BUNDLED_MODEL) if value == BUNDLED_MODEL.name else value

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [origin.strip() for origin in text.split(",") if origin.strip()]
        return value

    @field_validator("latency_buckets", mode="before")
    @classmethod
    def _split_buckets(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [float(part) for part in text.split(",") if part.strip()]
        return value

    @field_validator("latency_buckets")
    @classmethod
    def _check_buckets(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("latency_buckets needs at least one bucket")
        if any(b <= 0 for b in value) or any(a >= b for a, b in itertools.pairwise(value)):
            raise ValueError(f"latency_buckets must be positive and increasing, got {value}")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL: {value}")
        return level

    @field_validator("chat_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        # Fail at start-up, not on the first chat request, when the template names an unknown
        # placeholder or has an unbalanced brace.
        try:
            value.format(role="user", content="hello")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"chat_template may only use the placeholders {{role}} and {{content}}: {exc!r}"
            ) from exc
        return value

    @property
    def model_name(self) -> str:
        """The name clients put in "model" fields and see in /v1/models."""
        if self.served_model_name:
            return self.served_model_name
        return derive_model_name(self.model)

    def api_keys(self) -> list[str]:
        """Every accepted key: api_key plus the lines of api_key_file. Empty: no auth."""
        keys = [self.api_key] if self.api_key else []
        if self.api_key_file is not None:
            for line in self.api_key_file.read_text(encoding="utf-8").splitlines():
                key = line.strip()
                if key and not key.startswith("#"):
                    keys.append(key)
        return keys


def derive_model_name(model: str) -> str:
    """A hub id stays as it is ("openai-community/gpt2"); a local path gives its last part."""
    path = Path(model)
    if model.startswith((".", "/", "~")) or path.exists():
        return path.expanduser().resolve().name or model
    return model


def to_engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        model=settings.model,
        device=settings.device,
        dtype=settings.dtype,
        quantization=settings.quantization,
        max_num_seqs=settings.max_num_seqs,
        max_model_len=settings.max_model_len,
        kv_cache_tokens=settings.kv_cache_tokens,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_prefill_tokens_while_decoding=settings.max_prefill_tokens_while_decoding,
        seed=settings.seed,
        cuda_graphs=settings.cuda_graphs,
        share_prefixes=settings.share_prefixes,
    )
