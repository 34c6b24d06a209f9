"""GPT-2's byte-level BPE tokenizer, on the `tokenizers` library alone (no transformers: importing
transformers imports torch, and the API process must stay free of it).

Reads tokenizer.json when the checkpoint has one, else vocab.json + merges.txt. Also exposes each
token's raw bytes, which the incremental detokenizer needs to never split a UTF-8 character.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

EOS_TEXT = "<|endoftext|>"
# Longer texts are tokenized in pieces of about this many characters (see GPT2Tokenizer.encode).
PIECE_CHARS = 32_768


@cache
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in for each byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class GPT2Tokenizer:
    def __init__(self, model_dir: Path) -> None:
        tokenizer_json = model_dir / "tokenizer.json"
        if tokenizer_json.exists():
            self._tok = Tokenizer.from_file(str(tokenizer_json))
        else:
            bpe = models.BPE.from_file(str(model_dir / "vocab.json"), str(model_dir / "merges.txt"))
            self._tok = Tokenizer(bpe)
            self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            self._tok.decoder = decoders.ByteLevel()
        self._tok.add_special_tokens([AddedToken(EOS_TEXT, special=True)])
        vocab = self._tok.get_vocab()
        self.eos_token_id = vocab[EOS_TEXT]
        self.special_ids = frozenset({self.eos_token_id})
        to_byte = _unicode_to_byte()
        self.token_bytes: list[bytes] = [b""] * (max(vocab.values()) + 1)
        for text, token_id in vocab.items():
            if token_id in self.special_ids:
                self.token_bytes[token_id] = text.encode()
            else:
                self.token_bytes[token_id] = bytes(to_byte[c] for c in text)

        # GPT-2's own set-up: no normalizer, the byte-level pre-tokenizer with its regex and no
        # added space. Then the tokens' bytes are exactly the text's, and the text can be cut
        # where its pre-tokenization cuts anyway.
        pre = self._tok.pre_tokenizer
        self.plain_byte_level = (
            self._tok.normalizer is None
            and isinstance(pre, pre_tokenizers.ByteLevel)
            and pre.use_regex
            and not pre.add_prefix_space
        )
        # The most bytes of text one token stands for: a text of L bytes needs at least
        # ceil(L / max_token_bytes) tokens. Real GPT-2: 128; the bundled demo model: 25. None
        # when the tokenizer's set-up does not guarantee it.
        self.max_token_bytes: int | None = (
            max(len(b) for b in self.token_bytes) if self.plain_byte_level else None
        )
        # encode_batch releases the GIL while it works (encode holds it: 0.6 s for 900 KB, all
        # of it a stall of the event loop's thread); the _fast variant skips the offsets.
        self._encode_batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def encode(self, text: str) -> list[int]:
        """Text to ids, without holding the GIL while the BPE runs.

        A long text goes in pieces of about PIECE_CHARS, which bounds what one call holds
        (900 KB whole: ~100 MB of intermediate state; in pieces: a few MB), and gives the same
        ids: each piece starts at a space between two non-spaces, where GPT-2's pre-tokenizer
        starts a new word whatever comes before (its patterns end at a space, or start with
        one), so no token spans a cut."""
        if len(text) <= PIECE_CHARS or not self.plain_byte_level:
            return self._encode_piece(text)
        ids: list[int] = []
        for piece in _pieces(text, PIECE_CHARS):
            ids += self._encode_piece(piece)
        return ids

    def _encode_piece(self, text: str) -> list[int]:
        return list(self._encode_batch([text], add_special_tokens=False)[0].ids)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        data = b"".join(
            self.token_bytes[t]
            for t in token_ids
            if not (skip_special_tokens and t in self.special_ids)
        )
        return data.decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """One token as text; bytes that are not valid UTF-8 on their own become 'bytes:\\xNN'."""
        data = self.token_bytes[token_id]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


# A space with a non-space on both sides. Python's \s is str.isspace, wider than the
# pre-tokenizer's \s (Unicode White_Space): this can only miss cuts, never make a wrong one.
_CUT = re.compile(r"(?<=\S) (?=\S)")


def _pieces(text: str, size: int) -> list[str]:
    """Cut text into pieces of about `size` characters, each cut just before a _CUT space: the
    last in the window, else the first after it. A stretch with none stays whole."""
    pieces: list[str] = []
    start = 0
    while len(text) - start > size:
        cut = None
        for found in _CUT.finditer(text, start + 1, start + size):
            cut = found.start()
        if cut is None:
            after = _CUT.search(text, start + size)
            if after is None:
                break
            cut = after.start()
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def load_tokenizer(model_dir: Path) -> GPT2Tokenizer:
    return GPT2Tokenizer(model_dir)
