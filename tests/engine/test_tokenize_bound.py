"""Large text (issue 16 point 3): a text that cannot fit the context is refused before it is
tokenized, by a bound that never refuses one that fits; tokenizing runs off the event loop
(without the GIL) and a bounded number at once."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import pytest

from app.config import BUNDLED_MODEL
from app.engine.client import async_engine
from app.engine.client import tokenizer as tokenizer_module
from app.engine.client.async_engine import AsyncEngine
from app.engine.client.tokenizer import GPT2Tokenizer
from app.engine.config import EngineConfig
from app.engine.errors import InvalidRequestError

THREADS = getattr(async_engine, "TOKENIZE_THREADS", 2)
LONGEST_GPT2_TOKEN = 35496  # 128 bytes: "ÃÂ" x 32, the mojibake of a doubly encoded "Â"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> AsyncEngine:
    """An engine client with the real GPT-2 tokenizer; no worker is started."""
    return AsyncEngine(EngineConfig(model=str(tiny_model_dir), device="cpu"))


def test_max_token_bytes_measured_on_the_real_vocabularies(engine: AsyncEngine) -> None:
    assert engine.tokenizer.max_token_bytes == 128
    assert len(engine.tokenizer.token_bytes[LONGEST_GPT2_TOKEN]) == 128
    assert GPT2Tokenizer(BUNDLED_MODEL).max_token_bytes == 25


def test_the_bound_refuses_only_what_cannot_fit(engine: AsyncEngine) -> None:
    """The worst text for the bound: the longest token repeated. k copies are exactly k tokens,
    so a limit of k must accept them and refuse k + 1 (without tokenizing)."""
    word = engine.tokenizer.token_bytes[LONGEST_GPT2_TOKEN].decode()
    fits = asyncio.run(engine.encode(word * 1023, max_tokens=1023))
    assert fits == [LONGEST_GPT2_TOKEN] * 1023
    with pytest.raises(InvalidRequestError, match="at least 1024 tokens, more than the 1023"):
        asyncio.run(engine.encode(word * 1024, max_tokens=1023))


def test_a_text_that_cannot_fit_is_refused_without_tokenizing(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(text: str) -> list[int]:
        raise AssertionError("tokenized a text that cannot fit")

    monkeypatch.setattr(engine.tokenizer, "encode", never)
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(engine.encode("x" * 900_000, max_tokens=1023))
    assert info.value.field == "prompt" and "900000 bytes" in str(info.value)


def test_tokenizing_does_not_stall_the_event_loop(engine: AsyncEngine) -> None:
    """A text that must be tokenized whole (truncation asked for): the loop keeps turning while
    it is. Held GIL (the old encode), the loop's longest gap was the whole tokenization."""
    text = ("It is a truth universally acknowledged, that a single man " * 16_000)[:900_000]

    async def run() -> tuple[float, float]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        ids = await engine.encode(text)
        took = time.perf_counter() - start
        done.set()
        await ticker
        assert len(ids) > 100_000
        return took, max(gaps)

    took, longest_gap = asyncio.run(run())
    assert longest_gap < took / 4, (longest_gap, took)


def test_tokenizing_runs_a_bounded_number_at_once(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 texts at once are tokenized TOKENIZE_THREADS at a time (each 900 KB one holds ~100 MB
    while it is tokenized), not by as many threads as the default executor has."""
    active, most = 0, 0
    lock, release = threading.Lock(), threading.Event()

    def slow_encode(text: str) -> list[int]:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        release.wait(10)
        with lock:
            active -= 1
        return [0]

    monkeypatch.setattr(engine.tokenizer, "encode", slow_encode)

    async def run() -> None:
        text = "x" * (async_engine.INLINE_ENCODE_CHARS + 1)  # long enough for the pool
        calls = [asyncio.create_task(engine.encode(text)) for _ in range(16)]
        while most < THREADS:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)  # room for more threads to start, were any allowed
        release.set()
        assert await asyncio.gather(*calls) == [[0]] * 16

    asyncio.run(run())
    assert most == THREADS


def test_short_texts_are_tokenized_on_the_loop_and_long_ones_in_the_pool(
    engine: AsyncEngine,
) -> None:
    """Below INLINE_ENCODE_CHARS the pool's hand-off costs more than tokenizing: the loop's
    own thread does it. Either way the ids are the tokenizer's."""
    threads: list[str] = []
    real = engine.tokenizer.encode

    def recording(text: str) -> list[int]:
        threads.append(threading.current_thread().name)
        return real(text)

    limit = async_engine.INLINE_ENCODE_CHARS
    short, long = ("Hello, wörld 😀 " * 100)[:limit], ("Hello, wörld 😀 " * 100)[: limit + 1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine.tokenizer, "encode", recording)
        ids = asyncio.run(engine.encode(short)), asyncio.run(engine.encode(long))
    assert ids == (real(short), real(long))
    assert threads[0] == threading.main_thread().name
    assert threads[1].startswith("tokenize")


def test_tokenizing_in_pieces_gives_the_same_ids(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long texts are tokenized in pieces (bounded memory per call); the cuts must never change
    a token: words, numbers, punctuation runs, whitespace runs of every kind, contractions,
    non-ASCII letters, emoji and the special token, in random order, cut every ~40 chars."""
    rng = random.Random(16)
    parts = [
        "the", "King", "1999", "3.14", "!!", "--", "...", " ", "  ", "   ", "\n", "\n\n", "\t",
        "\u00a0", "\u2003", "\x1c", "'s", "'ll", "'re", "é", "naïve", "日本語", "🙂", "ÃÂ",
        "<|endoftext|>", "a'b", "x_y", "#",
    ]  # fmt: skip
    monkeypatch.setattr(tokenizer_module, "PIECE_CHARS", 40)
    tok = engine.tokenizer
    for _ in range(30):
        text = "".join(rng.choice(parts) for _ in range(2000))
        assert len(tokenizer_module._pieces(text, 40)) > 20
        whole = list(tok._tok.encode(text, add_special_tokens=False).ids)
        assert tok.encode(text) == whole
