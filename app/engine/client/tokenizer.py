"""GPT-2's byte-level BPE tokenizer, on the `tokenizers` library alone (no transformers: importing
transformers imports torch, and the API process must stay free of it).

Reads tokenizer.json when the checkpoint has one, else vocab.json + merges.txt. Also exposes each
token's raw bytes, which the incremental detokenizer needs to never split a UTF-8 character.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

EOS_TEXT = "<|endoftext|>"


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

        # The most bytes of text one token stands for (byte-level BPE: the tokens' bytes add up
        # to the text's, so a text of L bytes needs at least ceil(L / max_token_bytes) tokens).
        # Real GPT-2: 128; the bundled demo model: 25.
        self.max_token_bytes = max(len(b) for b in self.token_bytes)
        # encode_batch releases the GIL while it works (encode holds it: 0.6 s for 900 KB, all
        # of it a stall of the event loop's thread); the _fast variant skips the offsets.
        self._encode_batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def encode(self, text: str) -> list[int]:
        """Text to ids, without holding the GIL while the BPE runs."""
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


def load_tokenizer(model_dir: Path) -> GPT2Tokenizer:
    return GPT2Tokenizer(model_dir)
