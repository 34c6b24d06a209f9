"""Incremental detokenization: UTF-8 safe, equal to a one-shot decode, stop strings held back."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from app.engine.client.detokenizer import IncrementalDetokenizer
from app.engine.client.tokenizer import GPT2Tokenizer
from tests.checkpoints import write_tokenizer

TEXTS = [
    "Hello, world! 😀🎉 日本語のテキスト and Ελληνικά, naïve café 👩‍👩‍👧",
    "plain ascii only",
    "🧑🏽‍🚀 astronaut 中文字符 mixed ✓",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> GPT2Tokenizer:
    d: Path = tmp_path_factory.mktemp("tok")
    write_tokenizer(d)
    return GPT2Tokenizer(d)


def _stream(tok: GPT2Tokenizer, ids: list[int], **kw: object) -> tuple[list[str], str | None]:
    detok = IncrementalDetokenizer(tok.token_bytes, tok.special_ids, **kw)  # type: ignore[arg-type]
    pieces, stop = [], None
    for i, t in enumerate(ids):
        delta = detok.add([t], final=i == len(ids) - 1)
        pieces.append(delta.text)
        stop = stop or delta.stop_string
        if detok.stopped:
            break
    return pieces, stop


@pytest.mark.parametrize("text", TEXTS)
def test_stream_never_breaks_a_character_and_equals_one_shot_decode(
    tok: GPT2Tokenizer, text: str
) -> None:
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # multi-token characters are in play
    pieces, _ = _stream(tok, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids) == text


def test_random_token_soup_matches_one_shot_decode(tok: GPT2Tokenizer) -> None:
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(50256) for _ in range(rng.randint(1, 30))]
        pieces, _ = _stream(tok, ids)
        assert "".join(pieces) == tok.decode(ids)


def test_special_tokens_are_skipped_unless_asked(tok: GPT2Tokenizer) -> None:
    ids = [*tok.encode("a"), tok.eos_token_id, *tok.encode("b")]
    assert "".join(_stream(tok, ids)[0]) == "ab"
    assert "".join(_stream(tok, ids, skip_special_tokens=False)[0]) == "a<|endoftext|>b"


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_cut_and_never_leaked(tok: GPT2Tokenizer, include: bool) -> None:
    text = "The answer is 42. STOP here and more text after"
    ids = tok.encode(text)
    pieces, stop = _stream(tok, ids, stop=["STOP", "never"], include_stop_str_in_output=include)
    assert stop == "STOP"
    expected = "The answer is 42. STOP" if include else "The answer is 42. "
    assert "".join(pieces) == expected
    emitted = ""
    for p in pieces:  # no prefix of the stop string ever goes out before the match resolves
        emitted += p
        assert "ST" not in emitted or include


def test_partial_match_that_fails_is_released(tok: GPT2Tokenizer) -> None:
    text = "abc STO and then STOP"
    pieces, stop = _stream(tok, tok.encode(text), stop=["STOP"])
    assert stop == "STOP" and "".join(pieces) == "abc STO and then "


def test_stop_string_spanning_tokens_and_multibyte(tok: GPT2Tokenizer) -> None:
    text = "before 日本語 after"
    pieces, stop = _stream(tok, tok.encode(text), stop=["本語"])
    assert stop == "本語" and "".join(pieces) == "before 日"


def test_held_text_is_flushed_when_generation_ends(tok: GPT2Tokenizer) -> None:
    pieces, stop = _stream(tok, tok.encode("ends with ST"), stop=["STOP"])
    assert stop is None and "".join(pieces) == "ends with ST"
