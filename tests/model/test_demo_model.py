"""The bundled demo model (app/models/gpt2-demo): small enough to ship, loads through the same
path as gpt2, decodes exactly as transformers does, and has learned English."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from app.config import BUNDLED_MODEL
from app.engine import EngineConfig, SamplingParams
from app.engine.worker.llm import LLM
from tests.checkpoints import DEMO_PROMPTS as PROMPTS
from tests.checkpoints import TOKENIZER_DIR, hf_greedy

MAX_BYTES = 16 * 1024 * 1024
# Not from the training sources: plain modern English the model has never seen.
PASSAGE = (
    "The old house stood at the end of the lane, and every morning the children walked past it "
    "on their way to school. Their mother told them that a kind woman had lived there once, and "
    "that she had given bread to the poor of the village in the hard winter."
)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(EngineConfig(model=str(BUNDLED_MODEL), device="cpu", max_num_seqs=8))


@pytest.fixture(scope="module")
def hf_demo() -> GPT2LMHeadModel:
    return GPT2LMHeadModel.from_pretrained(BUNDLED_MODEL, dtype=torch.float32).eval()


def test_fits_the_size_budget_and_is_gpt2() -> None:
    files = [p for p in BUNDLED_MODEL.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    config = json.loads((BUNDLED_MODEL / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["model_type"] == "gpt2"
    names = {p.name for p in files}
    assert {"model.safetensors", "vocab.json", "merges.txt", "README.md"} <= names


def test_greedy_equals_transformers_alone_and_batched(llm: LLM, hf_demo: GPT2LMHeadModel) -> None:
    prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    refs = [hf_greedy(hf_demo, ids, 40, pad_token_id=llm.tokenizer.eos_token_id) for ids in prompts]
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    batched = [c.token_ids for c in llm.generate(prompts, params)]
    assert batched == refs
    (solo,) = llm.generate([prompts[0]], params)
    assert solo.token_ids == refs[0]


def _mean_loss(model: GPT2LMHeadModel, ids: list[int]) -> float:
    with torch.inference_mode():
        x = torch.tensor([ids])
        return float(model(input_ids=x, labels=x).loss)


def test_prefers_english_word_order(llm: LLM, hf_demo: GPT2LMHeadModel) -> None:
    words = PASSAGE.split()
    shuffled = words[:]
    random.Random(0).shuffle(shuffled)
    real = _mean_loss(hf_demo, llm.tokenizer.encode(PASSAGE))
    scrambled = _mean_loss(hf_demo, llm.tokenizer.encode(" ".join(shuffled)))
    uniform = float(torch.log(torch.tensor(float(llm.tokenizer.vocab_size))))
    # A random-weight model scores both near (or above) the uniform loss, with no gap.
    assert real < uniform - 3.0, (real, uniform)
    assert real < scrambled - 1.0, (real, scrambled)


def _real_word_share(llm: LLM) -> float:
    """Share of the words sampled at temperature 0.8 that are English words: here, words that
    GPT-2's own 50k vocabulary holds as single tokens (learned from web text, not our sources)."""
    gpt2_vocab = json.loads((TOKENIZER_DIR / "encoder.json").read_text())
    known = {t[1:].lower() for t in gpt2_vocab if t.startswith("Ġ") and t[1:].isalpha()}
    params = SamplingParams(max_tokens=120, temperature=0.8, seed=7, ignore_eos=True)
    texts = [c.text for c in llm.generate(PROMPTS, params)]
    words = [w.lower() for text in texts for w in re.findall(r"[A-Za-z]+", text)]
    assert len(words) > 200
    return sum(w in known for w in words) / len(words)


def test_samples_are_mostly_real_words(llm: LLM, tmp_path: Path) -> None:
    assert _real_word_share(llm) >= 0.8
    # The same check on an untrained model of the same shape and tokenizer must fail it.
    untrained = tmp_path / "untrained"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config.from_pretrained(BUNDLED_MODEL)).save_pretrained(untrained)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(BUNDLED_MODEL / name, untrained / name)
    assert _real_word_share(LLM(EngineConfig(model=str(untrained), device="cpu"))) < 0.8
