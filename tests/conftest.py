from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import Phase, settings
from transformers import GPT2LMHeadModel

from app.engine import EngineConfig
from app.engine.worker.llm import LLM
from tests.checkpoints import make_checkpoint


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    make_checkpoint(directory)
    return directory


@pytest.fixture(scope="session")
def hf_model(tiny_model_dir: Path) -> GPT2LMHeadModel:
    return GPT2LMHeadModel.from_pretrained(tiny_model_dir).eval()


@pytest.fixture
def make_llm(tiny_model_dir: Path) -> Iterator[object]:
    def factory(**overrides: object) -> LLM:
        config = EngineConfig(model=str(tiny_model_dir), device="cpu", **overrides)  # type: ignore[arg-type]
        return LLM(config)

    yield factory


# Property-based tests (hypothesis): derandomized, so every run (CI included) tries the same
# examples; no example database, so a run never depends on an earlier one. Example counts are
# set per test to keep each property to a few seconds.
# `make mutation` runs them with HYPOTHESIS_PROFILE=mutation: the same examples, no shrinking
# (a failing example is all a mutant needs; shrinking it would only cost time).
settings.register_profile("gpt2-serve", derandomize=True, database=None, deadline=None)
settings.register_profile(
    "mutation",
    parent=settings.get_profile("gpt2-serve"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpt2-serve"))
