"""Load a Hugging Face GPT-2 checkpoint (local directory or hub id) into app.model.GPT2.

Checkpoint names map one to one onto ours once the optional 'transformer.' prefix is dropped;
HF's Conv1D already stores weights as [in, out], so nothing is transposed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from app.hub import WEIGHT_FILES, ModelNotFoundError, resolve_model_dir
from app.model.gpt2 import GPT2, GPT2Config

__all__ = ["ModelNotFoundError", "load_gpt2", "resolve_model_dir"]

log = logging.getLogger(__name__)

# Buffers some checkpoints carry (the causal mask) that the model computes itself; lm_head is tied.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "lm_head.weight")


def read_config(model_dir: Path) -> GPT2Config:
    with open(model_dir / "config.json") as f:
        return GPT2Config.from_hf(json.load(f))


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        file = model_dir / name
        if not file.exists():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            raw = load_file(str(file))
        else:
            raw = torch.load(file, map_location="cpu", weights_only=True)
        return {
            k.removeprefix("transformer."): v
            for k, v in raw.items()
            if not k.endswith(IGNORED_SUFFIXES)
        }
    raise ModelNotFoundError(f"no {' or '.join(WEIGHT_FILES)} in {model_dir}")


def load_gpt2(model_dir: Path, dtype: torch.dtype, device: torch.device) -> GPT2:
    """Build GPT2 from a checkpoint directory; every parameter must be present, none extra."""
    cfg = read_config(model_dir)
    with torch.device("meta"):
        model = GPT2(cfg)
    state = load_state_dict(model_dir)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {model_dir} does not match GPT-2: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    state = {k: v.to(dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    model = model.to(device)
    model.eval()
    log.info(
        "loaded GPT-2 %s: %d layers, %d dims, %d heads",
        model_dir,
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_head,
    )
    return model
