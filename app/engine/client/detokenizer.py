"""Incremental detokenization with stop strings. Pure Python.

GPT-2's tokens are byte sequences, and one character (an emoji, a CJK ideograph) often spans
several tokens. Feeding each token's bytes to an incremental UTF-8 decoder emits only complete
characters, so a stream never shows a broken one, and the concatenated stream equals a one-shot
decode of all the tokens (both replace invalid bytes the same way).

Stop strings: text that could still be the start of a stop string is held back until the next
tokens settle it, so a partial match never leaks; on a match the text is cut at the stop string
(or just after it, if the caller asked to keep it).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass

PIECES = 64  # IncrementalDetokenizer._pieces


@dataclass(slots=True)  # one per streamed token: not frozen, see GenerationDelta
class DetokenizedDelta:
    text: str  # new text safe to emit
    stop_string: str | None  # the stop string that matched, if one did


class IncrementalDetokenizer:
    def __init__(
        self,
        token_bytes: Sequence[bytes],
        special_ids: frozenset[int],
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        self._token_bytes = token_bytes
        self._skip = special_ids if skip_special_tokens else frozenset()
        self._partial = b""  # the bytes of a character still incomplete
        self._stop = [s for s in stop if s]
        # No stop strings (the common case): every decoded character is emitted at once, so
        # the text need not be kept and searched.
        self.plain = not self._stop
        # The text handed out, in pieces: appending is O(1) where a growing string is copied
        # whole. Joined into one every PIECES pieces, which bounds their overhead (~50 bytes a
        # piece) for a long answer.
        self._pieces: list[str] = []
        self._include_stop = include_stop_str_in_output
        # With stop strings, _text is a window of the text: what is held back, and the last
        # _keep characters handed out before it, all a match may start in (a match ends in text
        # not yet handed out and starts up to len(stop)-1 before it). Trimmed after each add,
        # so no add copies or searches the whole text so far.
        self._keep = max((len(s) - 1 for s in self._stop), default=0)
        # A stop string's first and last characters: new text without any, when nothing is
        # held back, can neither end a match (its last character would be in the new text)
        # nor start one to hold back (its first would be): it is handed out whole, unsearched.
        self._edges = frozenset(s[0] for s in self._stop) | frozenset(s[-1] for s in self._stop)
        self._text = ""
        self._emitted = 0  # length of _text already handed out
        self.stopped = False
        self.stop_string: str | None = None  # the stop string that matched, once one did

    @property
    def text(self) -> str:
        """The text handed out so far."""
        return "".join(self._pieces)

    def _decode(self, data: bytes, final: bool) -> str:
        # What codecs' incremental UTF-8 decoder (errors="replace") does, without its Python
        # frame: complete characters out, an incomplete one's bytes kept for the next token.
        data = self._partial + data
        text, used = codecs.utf_8_decode(data, "replace", final)
        self._partial = data[used:]
        return text

    def add_one(self, token_id: int) -> str:
        """One more token, not the last one: add((token_id,)).text, without building the
        DetokenizedDelta or joining over a generator (OutputProcessor's path for most tokens).
        If a stop string matches, `stopped` and `stop_string` are set, as add() does."""
        if self.stopped:
            return ""
        if token_id in self._skip:
            new = self._decode(b"", False)  # no bytes: "" and _partial kept, as add's join
        else:
            data = self._partial + self._token_bytes[token_id]
            new, used = codecs.utf_8_decode(data, "replace", False)
            self._partial = data[used:]
        if self.plain:
            if new:
                pieces = self._pieces
                pieces.append(new)
                if len(pieces) >= PIECES:
                    self._pieces = ["".join(pieces)]
            return new
        return self._settle(new, False)

    def add(self, token_ids: Sequence[int], final: bool = False) -> DetokenizedDelta:
        """Decode new tokens; `final` flushes held-back text (no more tokens will come)."""
        if self.stopped:
            return DetokenizedDelta("", None)
        if len(token_ids) == 1:  # one token a step: no join over a generator
            t = token_ids[0]
            data = b"" if t in self._skip else self._token_bytes[t]
        else:
            data = b"".join(self._token_bytes[t] for t in token_ids if t not in self._skip)
        new = self._decode(data, final)
        if self.plain:
            self._hand_out(new)
            return DetokenizedDelta(new, None)
        return DetokenizedDelta(self._settle(new, final), self.stop_string)

    def _settle(self, new: str, final: bool) -> str:
        """With stop strings: the text to hand out now that `new` was decoded."""
        nothing_held = self._emitted == len(self._text)
        self._text += new
        if nothing_held and self._edges.isdisjoint(new):
            out = self._emit_until(len(self._text))
        else:
            match = self._find_stop()
            if match is not None:
                index, stop = match
                end = index + len(stop) if self._include_stop else index
                self.stopped, self.stop_string = True, stop
                return self._emit_until(max(end, self._emitted))
            hold = 0 if final else self._held_back()
            out = self._emit_until(len(self._text) - hold)
        cut = self._emitted - self._keep
        if cut > 0:
            self._text = self._text[cut:]
            self._emitted -= cut
        return out

    def _emit_until(self, end: int) -> str:
        new = self._text[self._emitted : end]
        if new:
            self._hand_out(new)
            self._emitted = end
        return new

    def _hand_out(self, new: str) -> None:
        if new:
            self._pieces.append(new)
            if len(self._pieces) >= PIECES:
                self._pieces = ["".join(self._pieces)]

    def _find_stop(self) -> tuple[int, str] | None:
        if not self._stop:
            return None
        # A match must end in text not yet emitted; it may start up to len(stop)-1 before it.
        best: tuple[int, str] | None = None
        for stop in self._stop:
            i = self._text.find(stop, max(0, self._emitted - len(stop) + 1))
            if i != -1 and (best is None or i < best[0]):
                best = (i, stop)
        return best

    def _held_back(self) -> int:
        """Length of the longest pending suffix that is a proper prefix of some stop string."""
        pending = self._text[self._emitted :]
        n = len(pending)
        longest = 0
        for stop in self._stop:
            # Such a suffix starts with stop[0]: try only those starts, longest first.
            i = pending.find(stop[0], max(0, n - len(stop) + 1))
            while i != -1 and n - i > longest:
                if pending.endswith(stop[: n - i]):
                    longest = n - i
                    break
                i = pending.find(stop[0], i + 1)
        return longest
