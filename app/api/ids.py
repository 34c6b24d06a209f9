"""Random ids: the request id (X-Request-Id, when the caller sends none) and each response's id."""

from __future__ import annotations

import os


def random_hex() -> str:
    """32 random hex digits, the shape of uuid4().hex (with 128 random bits where it has 122),
    for a seventh of its cost: a streamed request makes two."""
    return os.urandom(16).hex()


def new_id(prefix: str) -> str:
    """A response's id: `cmpl-...`, `chatcmpl-...`, as OpenAI shapes them."""
    return f"{prefix}-{random_hex()}"
