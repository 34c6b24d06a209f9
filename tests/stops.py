"""Stop strings for tests over a model's own output: ones that span two tokens, so a prefix of
the stop string arrives a token before it completes (the case the detokenizer must hold back;
a stop string inside one token never exercises that)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def spanning_stop(pieces: Sequence[str], after: int = 2) -> tuple[str, int]:
    """A stop string made of the end of piece k and the start of piece k + 1 (k >= `after`),
    two characters from each, whose first occurrence in the joined text is that one. Returns
    the stop string and the index where it starts in the joined text."""
    text = "".join(pieces)
    start = 0
    for k, (piece, following) in enumerate(itertools.pairwise(pieces)):
        start += len(piece)
        if k < after or len(piece.strip()) < 2 or len(following.strip()) < 2:
            continue
        if not (piece + following).isprintable():
            continue
        stop = piece[-2:] + following[:2]
        if text.index(stop) == start - 2:
            return stop, start - 2
    raise AssertionError(f"no stop string spans two tokens of {pieces!r}")
