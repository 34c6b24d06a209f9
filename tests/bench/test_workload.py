"""Length distributions, prompts of exact GPT-2 token counts, JSONL datasets."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from transformers import GPT2TokenizerFast

from app.bench.workload import (
    WORDS,
    DatasetEntry,
    LengthDist,
    Workload,
    WorkloadError,
    load_dataset,
    text_prompt,
)
from tests.checkpoints import write_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> GPT2TokenizerFast:
    directory = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(directory)
    return GPT2TokenizerFast.from_pretrained(directory)


def test_every_passage_word_is_one_gpt2_token(tokenizer: GPT2TokenizerFast) -> None:
    assert [w for w in set(WORDS) if len(tokenizer.encode(" " + w)) != 1] == []


@pytest.mark.parametrize("n", [1, 16, 64, 500])
def test_prompts_have_exactly_the_requested_tokens(tokenizer: GPT2TokenizerFast, n: int) -> None:
    rng = random.Random(n)
    for _ in range(5):
        assert len(tokenizer.encode(text_prompt(n, rng))) == n


def test_length_distributions() -> None:
    rng = random.Random(0)
    assert {LengthDist.fixed(7).sample(rng) for _ in range(20)} == {7}
    drawn = [LengthDist(3, 6).sample(rng) for _ in range(400)]
    assert set(drawn) == {3, 4, 5, 6}  # both ends included
    for bad in ((0, 4), (5, 4)):
        with pytest.raises(WorkloadError):
            LengthDist(*bad)


def test_specs_are_seeded_and_follow_the_distributions() -> None:
    w = Workload(LengthDist(4, 9), LengthDist(16, 64), seed=3)
    first = list(itertools.islice(w.specs(), 50))
    assert first == list(itertools.islice(w.specs(), 50))  # same seed, same requests
    assert first != list(itertools.islice(w.specs(stream=1), 50))  # warm-up differs
    assert all(16 <= (s.prompt_len or 0) <= 64 and 4 <= s.output_len <= 9 for s in first)
    assert all(len(s.prompt.split()) == s.prompt_len for s in first)
    assert len({s.prompt for s in first}) > 40  # different starts in the passage


def test_synthetic_prompts_do_not_share_long_openings(tokenizer: GPT2TokenizerFast) -> None:
    # A server that shares cached prefixes would skip prefill for a repeated opening, so the
    # workload must not repeat one by chance: within a full deal of the passage's starts no two
    # prompts share more than its longest repeated run of words (13).
    w = Workload(LengthDist.fixed(4), LengthDist.fixed(32), seed=0)
    prompts = [tuple(tokenizer.encode(s.prompt)) for s in itertools.islice(w.specs(), len(WORDS))]
    longest = max(
        next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
        for a, b in itertools.combinations(prompts, 2)
    )
    assert longest <= 13


def test_a_shared_prefix_opens_every_prompt(tokenizer: GPT2TokenizerFast) -> None:
    w = Workload(LengthDist.fixed(4), LengthDist.fixed(8), shared_prefix=40, seed=1)
    specs = list(itertools.islice(w.specs(), 20))
    tokens = [tokenizer.encode(s.prompt) for s in specs]
    assert all(len(t) == s.prompt_len == 48 for t, s in zip(tokens, specs, strict=True))
    assert len({tuple(t[:40]) for t in tokens}) == 1  # one prefix for all
    assert len({tuple(t[40:]) for t in tokens}) > 10  # then each its own words
    assert w.describe()["shared_prefix_len"] == 40
    with pytest.raises(WorkloadError, match="shared prefix"):
        Workload(LengthDist.fixed(4), dataset=(DatasetEntry("x", None),), shared_prefix=8)


def test_dataset_loading_and_cycling(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"prompt": "a b c", "output_len": 5}\n\n{"prompt": "hello", "max_tokens": 2}\n'
        '{"prompt": "no length"}\n'
    )
    entries = load_dataset(path)
    assert [(e.prompt, e.output_len) for e in entries] == [
        ("a b c", 5),
        ("hello", 2),
        ("no length", None),
    ]
    w = Workload(LengthDist.fixed(11), dataset=tuple(entries))
    specs = list(itertools.islice(w.specs(), 6))
    assert sorted(s.prompt for s in specs[:3]) == ["a b c", "hello", "no length"]
    assert sorted(s.prompt for s in specs[3:]) == ["a b c", "hello", "no length"]
    assert {s.prompt: s.output_len for s in specs} == {"a b c": 5, "hello": 2, "no length": 11}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"text": "x"}', '"prompt" must be'),
        ('{"prompt": ""}', '"prompt" must be'),
        ('{"prompt": "x", "output_len": 0}', '"output_len" must be'),
        ('{"prompt": "x", "output_len": "5"}', '"output_len" must be'),
    ],
)
def test_bad_dataset_line_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(WorkloadError, match=rf"bad.jsonl:2: .*{message}"):
        load_dataset(path)


def test_empty_dataset_and_ambiguous_workload(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(WorkloadError, match="no requests"):
        load_dataset(path)
    with pytest.raises(WorkloadError):
        Workload(LengthDist.fixed(1))
