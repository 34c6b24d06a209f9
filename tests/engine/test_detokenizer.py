"""Incremental detokenization: UTF-8 safe, equal to a one-shot decode, stop strings held back.

The stop-string tests use stop strings that span several tokens, so that a prefix of the stop
string arrives tokens before it completes: that prefix must be held back, never streamed. The
property test at the end checks the whole contract against a one-shot decode of each prefix of
random token sequences (part of `make mutation`)."""

from __future__ import annotations

import codecs
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.client.detokenizer import DetokenizedDelta, IncrementalDetokenizer
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


def _pieces(tok: GPT2Tokenizer, text: str, **kw: object) -> list[tuple[bytes, str, str | None]]:
    """(token bytes, text released, stop string) per token of `text`, one token per add()."""
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok.token_bytes, tok.special_ids, **kw)  # type: ignore[arg-type]
    out = []
    for i, t in enumerate(ids):
        delta = detok.add([t], final=i == len(ids) - 1)
        out.append((tok.token_bytes[t], delta.text, delta.stop_string))
        if detok.stopped:
            break
    return out


def _spans_tokens(tok: GPT2Tokenizer, text: str, stop: str) -> bool:
    """Whether the first occurrence of `stop` in `text` starts in an earlier token than the one
    that completes it (so a prefix of it arrives first and must be held back)."""
    start = text.index(stop)
    decoded = ""
    for t in tok.encode(text):
        before = len(decoded)
        decoded += tok.token_bytes[t].decode("utf-8", errors="ignore")
        if len(decoded) >= start + len(stop):
            return start < before
    raise AssertionError("stop string not found")


@pytest.mark.parametrize("include", [False, True])
def test_multi_token_stop_string_is_cut_and_never_leaked(tok: GPT2Tokenizer, include: bool) -> None:
    text, stop = "one two three\n\nUser: hi there", "\n\nUser:"
    assert _spans_tokens(tok, text, stop)  # "\n", "\n", "User", ":" are four tokens
    pieces = _pieces(tok, text, stop=[stop, "zz"], include_stop_str_in_output=include)
    assert pieces == [
        (b"one", "one", None),
        (b" two", " two", None),
        (b" three", " three", None),
        (b"\n", "", None),  # could start the stop string: held
        (b"\n", "", None),
        (b"User", "", None),
        (b":", stop if include else "", stop),
    ]


def test_a_stop_string_across_words_holds_each_word_back(tok: GPT2Tokenizer) -> None:
    text = "Hello world, the end is near. The END."
    assert _spans_tokens(tok, text, " is near.")
    assert _pieces(tok, text, stop=[" is near."]) == [
        (b"Hello", "Hello", None),
        (b" world", " world", None),
        (b",", ",", None),
        (b" the", " the", None),
        (b" end", " end", None),
        (b" is", "", None),
        (b" near", "", None),
        (b".", "", " is near."),
    ]


def test_partial_match_that_fails_is_released(tok: GPT2Tokenizer) -> None:
    # " ST", "O" could begin "STOP": held until " and" rules it out, then released at once.
    assert _pieces(tok, "abc STO and then STOP", stop=["STOP"]) == [
        (b"abc", "abc", None),
        (b" ST", " ", None),
        (b"O", "", None),
        (b" and", "STO and", None),
        (b" then", " then", None),
        (b" STOP", " ", "STOP"),
    ]


def test_the_first_stop_string_to_complete_wins(tok: GPT2Tokenizer) -> None:
    text = "x = 1; y = 2; z = 3"
    assert _pieces(tok, text, stop=["; z", "= 2"])[-1] == (b" 2", "", "= 2")
    assert "".join(p for _, p, _ in _pieces(tok, text, stop=["; z", "= 2"])) == "x = 1; y "
    # Both complete with the same token: the one that starts first is cut at.
    pieces = _pieces(tok, text, stop=["; y =", " 1;"])
    assert pieces[-1] == (b";", "", " 1;")
    assert "".join(p for _, p, _ in pieces) == "x ="


def test_stop_string_spanning_tokens_and_multibyte(tok: GPT2Tokenizer) -> None:
    text = "before 日本語 after"
    pieces, stop = _stream(tok, tok.encode(text), stop=["本語"])
    assert stop == "本語" and "".join(pieces) == "before 日"
    pieces, stop = _stream(tok, tok.encode(text), stop=["本語"], include_stop_str_in_output=True)
    assert stop == "本語" and "".join(pieces) == "before 日本語"


def test_held_text_is_flushed_when_generation_ends(tok: GPT2Tokenizer) -> None:
    pieces = _pieces(tok, "ends with ST", stop=["STOP"])
    assert pieces[-1] == (b" ST", " ST", None)  # the last token: nothing more can come
    assert "".join(p for _, p, _ in pieces) == "ends with ST"


def test_nothing_more_after_a_stop(tok: GPT2Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok.token_bytes, tok.special_ids, stop=["b"])
    assert detok.add(tok.encode("a b c")) == DetokenizedDelta("a ", "b")
    assert detok.stopped and detok.text == "a "
    assert detok.add(tok.encode(" d"), final=True) == DetokenizedDelta("", None)
    assert detok.text == "a "


def test_empty_stop_strings_are_ignored(tok: GPT2Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok.token_bytes, tok.special_ids, stop=["", "zz"])
    assert detok.add(tok.encode("a b")) == DetokenizedDelta("a b", None)


def test_text_is_what_was_handed_out(tok: GPT2Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok.token_bytes, tok.special_ids, stop=["STOP"])
    detok.add(tok.encode("go ST"))
    assert detok.text == "go "  # " ST" is held back
    detok.add(tok.encode("ay"), final=True)
    assert detok.text == "go STay"


# ---- the property: incremental == one-shot decode of each prefix, cut at the first stop ----

ALPHABET = "ab \n.日😀é"


def _one_shot(data: bytes, final: bool) -> str:
    """Decode bytes at once, keeping an incomplete last character back unless final."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=final)


def _held(text: str, stops: list[str]) -> int:
    """The longest suffix of text that is a proper prefix of a stop string."""
    return max(
        (k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])),
        default=0,
    )


@st.composite
def _tokens_and_chunks(draw: st.DrawFn, tok: GPT2Tokenizer) -> tuple[list[int], list[int]]:
    text = draw(st.text(alphabet=ALPHABET, max_size=24))
    ids = tok.encode(text)
    start = draw(st.integers(0, min(2, len(ids))))  # may start inside a character
    ids = ids[start:]
    extra = draw(st.lists(st.sampled_from([tok.eos_token_id, 0, 1, 31, 50255]), max_size=2))
    for token in extra:
        ids.insert(draw(st.integers(0, len(ids))), token)
    sizes = draw(st.lists(st.integers(1, 3), min_size=len(ids), max_size=len(ids)))
    bounds, at = [], 0
    for size in sizes:
        if at >= len(ids):
            break
        at = min(len(ids), at + size)
        bounds.append(at)
    return ids, bounds


@settings(max_examples=300)
@given(
    data=st.data(),
    stops=st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=4), max_size=3),
    include=st.booleans(),
    skip=st.booleans(),
)
def test_incremental_equals_one_shot_decode_cut_at_the_first_stop(
    tok: GPT2Tokenizer, data: st.DataObject, stops: list[str], include: bool, skip: bool
) -> None:
    ids, bounds = data.draw(_tokens_and_chunks(tok))
    detok = IncrementalDetokenizer(tok.token_bytes, tok.special_ids, stops, include, skip)
    emitted, prev = "", 0
    for bound in bounds:
        final = bound == len(ids)
        delta = detok.add(ids[prev:bound], final=final)
        prev = bound
        emitted += delta.text
        kept = [t for t in ids[:bound] if not (skip and t in tok.special_ids)]
        text = _one_shot(b"".join(tok.token_bytes[t] for t in kept), final)
        found = [(text.find(s), n, s) for n, s in enumerate(stops) if s in text]
        if found:  # the first chunk that completes a stop string ends the text there
            index, _, stop = min(found)
            assert delta.stop_string == stop and detok.stopped
            assert emitted == text[: index + len(stop) if include else index]
            return
        assert delta.stop_string is None and not detok.stopped
        # Everything is released but a tail that could still become a stop string.
        assert emitted == text[: len(text) - (0 if final else _held(text, stops))]
    if ids:
        assert emitted == tok.decode(ids, skip_special_tokens=skip)


def test_a_new_detokenizer_has_not_stopped(tok: GPT2Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok.token_bytes, tok.special_ids, stop=["x"])
    assert detok.stopped is False and detok.text == ""


def test_the_first_of_two_matches_in_one_chunk_is_cut_at(tok: GPT2Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok.token_bytes, tok.special_ids, stop=["STOP"])
    assert detok.add(tok.encode("a STOP b STOP c")) == DetokenizedDelta("a ", "STOP")


def test_stop_strings_starting_at_the_same_place_the_first_listed_wins(
    tok: GPT2Tokenizer,
) -> None:
    for stops, want in ((["ab", "abc"], "ab"), (["abc", "ab"], "abc")):
        detok = IncrementalDetokenizer(
            tok.token_bytes, tok.special_ids, stop=stops, include_stop_str_in_output=True
        )
        assert detok.add(tok.encode("x abc")) == DetokenizedDelta(f"x {want}", want)


@pytest.mark.parametrize("one_at_a_time", [True, False])
def test_the_longest_pending_prefix_of_a_stop_string_is_held(one_at_a_time: bool) -> None:
    """ "xxx" against the stop string "xxyz": "xxx" itself is no prefix of it, "xx" is, so "xx"
    is held back, not just "x" (which would stream the stop string's first "x" before it
    matches at the next tokens)."""
    bytes_of = [b"x", b"y", b"z"]
    ids = {b: i for i, b in enumerate(bytes_of)}
    detok = IncrementalDetokenizer(bytes_of, frozenset(), stop=["xxyz"])
    out = []
    for ch in b"xxxyz":
        token = ids[bytes([ch])]
        out.append(detok.add_one(token) if one_at_a_time else detok.add([token]).text)
    assert out[:3] == ["", "", "x"]  # after "xxx": the first x out, "xx" held
    assert "".join(out) == "x" and detok.stopped
