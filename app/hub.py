"""Where a model's files live: a local directory, or a Hugging Face Hub id (fetched or cached), and
whether that directory holds a GPT-2 checkpoint.

Torch-free, so the API process can find the tokenizer in the same place as the worker finds the
weights, and the CLI can check both before anything is loaded. Every error is one sentence that
says what is wrong and what to do (app/startup_errors.py turns it into the exit status).
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))  # either set will do
# What snapshot_download fetches: the files above and the configs, not TF/Flax/ONNX weights.
HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors", "pytorch_model.bin"]
SETTING = "--model / GPT2_MODEL"  # where users name the model, for the messages


class ModelNotFoundError(RuntimeError):
    """The model is neither a local directory nor reachable on the hub, or that directory is not
    a GPT-2 checkpoint."""


def looks_like_path(model: str) -> bool:
    """True when `model` can only mean a local path: it starts like one, exists, or has more
    than one "/" (a hub id is "name" or "owner/name"). Such a name is never sent to the hub, so
    a typo in a path is reported as a missing directory, not as an unknown hub id."""
    return (
        model.startswith(("/", "./", "../", "~"))
        or model in (".", "..")
        or model.count("/") > 1
        or Path(model).expanduser().exists()
    )


def resolve_model_dir(model: str) -> Path:
    """A local directory as is; otherwise a hub id, fetched or found in the local HF cache."""
    path = Path(model).expanduser()
    if looks_like_path(model):
        if path.is_dir():
            return path
        if path.exists():
            raise ModelNotFoundError(
                f"model {model} is a file, not a directory: point {SETTING} at the directory "
                "that holds config.json and the weights"
            )
        raise ModelNotFoundError(
            f"model directory {model} does not exist: point {SETTING} at a GPT-2 checkpoint "
            "directory, or leave it unset to serve the bundled demo model"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=model, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # offline, unknown id, gated repo, ...
        raise ModelNotFoundError(_hub_failure(model, exc)) from exc


def _hub_failure(model: str, exc: Exception) -> str:
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    kind = type(exc).__name__
    if isinstance(exc, GatedRepoError):
        return (
            f"model {model!r} is a gated Hugging Face Hub repository ({kind}): accept its terms "
            "on huggingface.co and set HF_TOKEN, or pass a local directory"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"model {model!r} is not a local directory nor a model on the Hugging Face Hub "
            f"({kind}): check the name, or pass a local directory ({SETTING})"
        )
    if isinstance(exc, HFValidationError):
        return (
            f"model {model!r} is not a local directory nor a valid Hugging Face Hub id: pass a "
            f"GPT-2 checkpoint directory or a hub id such as gpt2 ({SETTING})"
        )
    local = "./" + model.rsplit("/", 1)[-1]
    return (
        f"model {model!r} is not a local directory and could not be fetched from the Hugging "
        f"Face Hub ({kind}: offline, or the hub unreachable): download it where there is "
        f"network access with `hf download {model} --local-dir {local}` and pass "
        f"--model {local} (or GPT2_MODEL={local})"
    )


def check_checkpoint(model_dir: Path, model: str | None = None) -> None:
    """Raise ModelNotFoundError naming every file a GPT-2 checkpoint needs that `model_dir`
    lacks (config.json, the weights, the tokenizer), or a config of another architecture.
    `model`: the name the user gave, when it is not the directory itself (a hub id)."""
    where = str(model_dir) if model is None else f"{model!r} ({model_dir})"
    missing = []
    if not (model_dir / "config.json").is_file():
        missing.append("config.json")
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if not any(all((model_dir / name).is_file() for name in group) for group in TOKENIZER_FILES):
        missing.append(" or ".join(" + ".join(group) for group in TOKENIZER_FILES))
    if missing:
        raise ModelNotFoundError(
            f"model {where} is not a GPT-2 checkpoint: it has no {'; no '.join(missing)}. "
            f"Point {SETTING} at a directory saved by transformers' save_pretrained "
            "(or downloaded with `hf download`)"
        )
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"model {where}: config.json is not readable JSON ({exc})"
        ) from exc
    model_type = config.get("model_type", "gpt2") if isinstance(config, dict) else None
    if model_type != "gpt2":
        raise ModelNotFoundError(
            f"model {where} is a {model_type!r} checkpoint (config.json's model_type), not "
            "GPT-2: this server runs the GPT-2 architecture only"
        )
