"""Server settings, read once at the edge from environment variables prefixed GPT2_.

The engine never reads the environment: `Settings.engine_config()` turns these settings into the
frozen EngineConfig it takes. The engine options are not declared here: they are EngineConfig's
fields (with their help text and bounds), made into Settings fields by `_engine_settings_fields`.
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_origin, get_type_hints

from pydantic import Field, create_model, field_validator, model_validator
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


def _split_list(value: Any) -> Any:
    """A list setting from the environment or a flag: a JSON list or comma-separated."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


# Settings-only changes to an engine field: the engine needs a model named, the server serves the
# bundled one unless told otherwise (the "gpt2-demo" alias is resolved by Settings._bundled_alias).
_ENGINE_OVERRIDES: dict[str, dict[str, Any]] = {
    "model": {
        "default": BUNDLED_MODEL.name,
        "help": "; gpt2-demo: the small GPT-2 bundled with the package, served offline",
    },
}


def _engine_settings_fields() -> dict[str, Any]:
    """EngineConfig's fields as pydantic field definitions: same names, types, defaults, help
    (description) and bounds (ge), so each is a setting without being declared twice."""
    hints = get_type_hints(EngineConfig)
    definitions: dict[str, Any] = {}
    for f in dataclasses.fields(EngineConfig):
        override = _ENGINE_OVERRIDES.get(f.name, {})
        default = override.get("default", f.default)
        if default is dataclasses.MISSING:
            raise TypeError(f"EngineConfig.{f.name} needs a default in _ENGINE_OVERRIDES")
        annotation = hints[f.name]
        if get_origin(annotation) in (tuple, list):
            annotation = Annotated[annotation, NoDecode]  # comma-separated: see _split_lists
        bounds = {k: f.metadata[k] for k in ("ge", "gt", "le") if k in f.metadata}
        description = f.metadata.get("help", "") + override.get("help", "")
        extra = {"group": f.metadata.get("group", "engine")}
        if "metavar" in f.metadata:
            extra["metavar"] = f.metadata["metavar"]
        definitions[f.name] = (
            annotation,
            Field(default=default, description=description, json_schema_extra=extra, **bounds),
        )
    return definitions


_ENGINE_FIELDS = _engine_settings_fields()
_ENGINE_LIST_FIELDS = tuple(
    name for name, hint in get_type_hints(EngineConfig).items() if get_origin(hint) in (tuple, list)
)

if TYPE_CHECKING:
    # mypy sees plain BaseSettings: read engine fields through Settings.engine_config(), typed.
    _EngineSettings = BaseSettings
else:
    _EngineSettings = create_model("_EngineSettings", __base__=BaseSettings, **_ENGINE_FIELDS)


class Settings(_EngineSettings):
    """Every server option. Environment: GPT2_<NAME>, e.g. GPT2_MAX_NUM_SEQS=64.

    The engine options are EngineConfig's fields (app/engine/config.py), added to this class
    from there; the rest are declared below."""

    # env_ignore_empty: GPT2_X= (set but empty, as compose files pass "${GPT2_X}" when the
    # operator set nothing) counts as unset, so the default applies: an empty GPT2_MODEL serves
    # the bundled demo model instead of the current directory. An empty flag is still a value.
    model_config = SettingsConfigDict(
        env_prefix="GPT2_", extra="ignore", validate_default=True, env_ignore_empty=True
    )

    # --- model name -----------------------------------------------------------------------------
    served_model_name: str | None = Field(
        default=None,
        description='the name in "model" fields and /v1/models; unset: derived from --model',
        json_schema_extra={"group": "model"},
    )

    # --- admission (reject early with 429 rather than queue forever) -------------------------
    max_queued_requests: int = Field(
        default=256,
        ge=1,
        description="requests waiting beyond max_num_seqs before new ones get 429",
        json_schema_extra={"group": "limits"},
    )
    max_queued_tokens: int = Field(
        default=262144,
        ge=1,
        description="prompt tokens waiting before new requests get 429",
        json_schema_extra={"group": "limits"},
    )

    # --- HTTP ---------------------------------------------------------------------------------
    host: str = Field(
        default="0.0.0.0", description="address to listen on", json_schema_extra={"group": "server"}
    )
    port: int = Field(
        default=8000,
        ge=1,
        le=65535,
        description="port to listen on",
        json_schema_extra={"group": "server"},
    )
    api_key: str | None = Field(
        default=None,
        description="bearer key clients must send; unset (and no file): no auth",
        json_schema_extra={"group": "server"},
    )
    api_key_file: Path | None = Field(
        default=None,
        description='file of accepted keys, one per line; blank lines and "#" comments ignored',
        json_schema_extra={"group": "server"},
    )
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins allowed by CORS (none: no CORS headers at all)",
        json_schema_extra={"group": "server"},
    )
    max_request_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="larger request bodies get 413",
        json_schema_extra={"group": "limits"},
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="open connections (or requests in progress) past which new requests get "
        "503 (uvicorn's limit_concurrency); keep it above max_num_seqs + max_queued_requests",
        json_schema_extra={"group": "limits"},
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a connection must send a request's complete headers within this many "
        "seconds of opening or of its last answer, else it is closed (slow clients, slowloris)",
        json_schema_extra={"group": "limits"},
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="a request's whole body must arrive within this many seconds, else 408 and "
        "the connection is closed",
        json_schema_extra={"group": "limits"},
    )
    log_prompts: bool = Field(
        default=False,
        description="put prompts in the request log (they can hold personal data: off unless "
        "asked for)",
        json_schema_extra={"group": "observability"},
    )
    drain_timeout_seconds: float = Field(
        default=30.0,
        ge=0,
        description="on SIGTERM/SIGINT, how long in-flight requests may run before exit",
        json_schema_extra={"group": "server"},
    )
    keep_alive_seconds: float = Field(
        default=15.0,
        gt=0,
        description="SSE comment lines this often while a stream is idle",
        json_schema_extra={"group": "server"},
    )
    stream_interval: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="a stream writes once every N tokens of a choice (its first and last token "
        "at once); the tokens in between go out together, in one chunk on the OpenAI routes. "
        "1 writes every token as it comes; more trades a smooth stream for less CPU a token in "
        "the HTTP process (vLLM's and SGLang's --stream-interval)",
        json_schema_extra={"group": "server"},
    )
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="HTTP processes in front of the one engine worker, all on the same port, "
        "each with its own share of the admission limits (1: one process, which starts the "
        "worker itself)",
        json_schema_extra={"group": "server"},
    )

    # --- observability ------------------------------------------------------------------------
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="json: one object per line; text: for humans",
        json_schema_extra={"group": "observability"},
    )
    log_level: str = Field(
        default="INFO",
        description="least severe level logged (any case); DEBUG adds the traceback of a "
        "failed start",
        json_schema_extra={
            "group": "observability",
            "metavar": "{DEBUG,INFO,WARNING,ERROR,CRITICAL}",
        },
    )
    latency_buckets: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_LATENCY_BUCKETS),
        description="buckets (seconds) of every latency histogram (TTFT, inter-token, "
        "end-to-end, queue, prefill, decode, engine step)",
        json_schema_extra={"group": "observability"},
    )

    # --- chat -----------------------------------------------------------------------------------
    chat_template: str = Field(
        default=DEFAULT_CHAT_TEMPLATE,
        description="applied to each chat message; placeholders {role} and {content}",
        json_schema_extra={"group": "model"},
    )
    chat_generation_prompt: str = Field(
        default=DEFAULT_CHAT_GENERATION_PROMPT,
        description="appended after the rendered chat messages",
        json_schema_extra={"group": "model"},
    )

    @field_validator("model")
    @classmethod
    def _bundled_alias(cls, value: str) -> str:
        if not value.strip():  # "." would be the current directory: never what was meant
            raise ValueError(
                "must not be empty: name a GPT-2 checkpoint directory or hub id, or leave it "
                "out to serve the bundled demo model"
            )
        # "gpt2-demo" names the bundled model wherever the package is installed (an image, say).
        return str(BUNDLED_MODEL) if value == BUNDLED_MODEL.name else value

    @field_validator("cors_allow_origins", "latency_buckets", *_ENGINE_LIST_FIELDS, mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return _split_list(value)

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

    @functools.cached_property
    def model_name(self) -> str:
        """The name clients put in "model" fields and see in /v1/models (resolved once: every
        request checks its "model" field against it)."""
        if self.served_model_name:
            return self.served_model_name
        return derive_model_name(self.engine_config().model)

    def engine_config(self) -> EngineConfig:
        """The engine's options, from the fields of the same names."""
        return EngineConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(EngineConfig)}
        )

    @model_validator(mode="after")
    def _check_engine_config(self) -> Settings:
        # EngineConfig's cross-field rules (max_num_batched_tokens >= max_num_seqs, ...) fail
        # here, at start-up, naming the field, rather than when the engine starts.
        self.engine_config()
        return self

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
    return settings.engine_config()
