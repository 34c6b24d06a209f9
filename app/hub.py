"""Where a model's files live: a local directory, or a Hugging Face Hub id (fetched or cached).

Torch-free, so the API process can find the tokenizer in the same place as the worker finds the
weights.
"""

from __future__ import annotations

from pathlib import Path


class ModelNotFoundError(RuntimeError):
    """The model is neither a local directory nor reachable on the hub."""


def resolve_model_dir(model: str) -> Path:
    """A local directory as is; otherwise a hub id, fetched or found in the local HF cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"--model {model!r} is a file; pass the checkpoint's directory")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.txt", "*.safetensors", "pytorch_model.bin"]
        return Path(snapshot_download(repo_id=model, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown id, gated repo, ...
        name = Path(model).name
        raise ModelNotFoundError(
            f"model {model!r} is not a local directory and could not be fetched from the "
            f"Hugging Face Hub ({type(exc).__name__}). Download it on a machine with network "
            f"access (e.g. `huggingface-cli download {model} --local-dir ./{name}`) "
            f"and pass that directory: --model ./{name} (or GPT2_MODEL=...)."
        ) from exc
