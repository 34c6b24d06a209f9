"""Request fields the server does not know are an error; documented ones it ignores are logged.

OpenAI answers a field it does not know with 400 "Unrecognized request argument supplied: x",
so a misspelt `max_token` is caught rather than answered with the default 16 tokens. Here the
same holds for every request body, nested TGI `parameters` included: a name that is neither
declared by the model nor in the model's `accepted_unused` list fails validation, and the
error (app/api/errors.py) names it in OpenAI's words.

`accepted_unused` lists the fields OpenAI's (or TGI's) API reference documents for that request
and this server does not implement, so clients that send them (the `openai` client passes
through whatever the caller sets, huggingface_hub sends TGI's chat fields) keep working. Each
is logged once per process, with its name, when a request first sets it.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError

logger = logging.getLogger(__name__)

UNRECOGNIZED = "unrecognized_argument"  # the pydantic error type errors.py words for clients

# OpenAI's chat completions reference (and the openai client's CompletionCreateParams), less
# what app/api/schemas/openai.py declares. None of them changes what GPT-2 writes here.
OPENAI_CHAT_UNUSED = frozenset(
    {
        "audio",
        "function_call",
        "metadata",
        "modalities",
        "moderation",
        "parallel_tool_calls",
        "prediction",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "safety_identifier",
        "service_tier",
        "store",
        "tool_choice",
        "verbosity",
        "web_search_options",
    }
)
# TGI's /v1/chat/completions adds these to OpenAI's fields (its ChatRequest).
TGI_CHAT_UNUSED = frozenset({"tool_prompt"})
# TGI's GenerateRequest: special tokens are never added to a GPT-2 prompt anyway.
TGI_GENERATE_UNUSED = frozenset({"add_special_tokens"})
# OpenAI's stream_options: the obfuscation padding is not sent, so there is nothing to turn off.
OPENAI_STREAM_OPTIONS_UNUSED = frozenset({"include_obfuscation"})

_logged: set[str] = set()


class KnownFieldsOnly(BaseModel):
    """A request model that refuses fields it does not know (see the module's docstring)."""

    accepted_unused: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # not an object: the model's own validation says so
        known = cls.model_fields.keys()
        unknown = [k for k in data if k not in known and k not in cls.accepted_unused]
        if unknown:
            raise PydanticCustomError(
                UNRECOGNIZED,
                "Unrecognized request argument supplied: {names}",
                {"names": [str(name) for name in unknown]},
            )
        for name in cls.accepted_unused.intersection(data):
            if data[name] is not None:
                _log_once(cls.__name__, name)
        return data


def _log_once(model: str, name: str) -> None:
    key = f"{model}.{name}"
    if key not in _logged:
        _logged.add(key)
        logger.info(
            "request field %r is accepted and ignored: the server does not implement it "
            "(%s; logged once per process)",
            name,
            model,
        )
