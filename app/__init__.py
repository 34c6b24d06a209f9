"""gpt2-serve: a GPT-2 inference service."""
