"""GPT-2 in torch. Knows nothing of requests or scheduling."""

from app.model.gpt2 import GPT2, GPT2Config

__all__ = ["GPT2", "GPT2Config"]
