"""Logging: one JSON object per line (GPT2_LOG_FORMAT=json, the default) or text for humans.

Every generation request ends with one line from the `gpt2_serve.requests` logger: the
X-Request-Id, HTTP status, outcome, finish reasons, prompt and completion tokens, and queue /
time-to-first-token / total times in milliseconds. The prompt itself appears only when the
operator set GPT2_LOG_PROMPTS=true (prompts can hold personal data).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

REQUEST_LOGGER = "gpt2_serve.requests"
request_logger = logging.getLogger(REQUEST_LOGGER)

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
# (uvicorn adds color_message, the message with terminal colours: not for log files.)
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "message", ...fields given with extra=, "exc_info"}."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extra_fields(record))
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The usual line, then the extra fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _extra_fields(record)
        if not fields:
            return line
        pairs = " ".join(f"{k}={_text(v)}" for k, v in fields.items() if v is not None)
        first, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{first} {pairs}{newline}{rest}"


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value and '"' not in value else json.dumps(value)
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """One handler on the root logger (stderr); uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)  # the root's level (uvicorn.Config may set its own)
        logger.propagate = True


def log_finished(fields: Mapping[str, Any]) -> None:
    """The one line for a finished generation request (fields: see app/api/telemetry.py)."""
    request_logger.info("request finished", extra=dict(fields))
