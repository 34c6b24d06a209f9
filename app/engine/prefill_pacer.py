"""How many prompt tokens a step may add while streams decode, from measured step times.
Pure Python.

A plain decode step takes d seconds; each prompt token in a step adds about p. A long prompt of
P tokens cut into chunks of c tokens then costs the running streams a gap of d + c*p per chunk,
and reaches its first token after P/c such steps instead of one P*p step on an idle engine:

    gap ratio   (d + c*p) / d           = 1 + c*p/d
    TTFT ratio  (P/c) * (d + c*p) / (P*p) = 1 + d/(c*p)

So the chunk that balances the two sits near c = d/p; we take c = 1.5 * d/p (gaps at most ~2.5x
a decode step, first token ~1.7x the idle one). d/p differs by orders of magnitude between a
2-core CPU (a decode row costs several prompt tokens) and a GPU (a decode step costs hundreds),
and with the batch size, which is why it is measured rather than configured.
"""

from __future__ import annotations


class PrefillPacer:
    BALANCE = 1.5  # c = BALANCE * d / p (see the module docstring)

    def __init__(self, initial: int, low: int, high: int, smoothing: float = 0.2) -> None:
        self.initial, self.low, self.high = initial, low, high
        self.smoothing = smoothing
        self.decode_seconds: float | None = None  # d: a step with decode rows only
        self.token_seconds: float | None = None  # p: what one prompt token adds to a step

    def observe(self, seconds: float, num_decode: int, num_prefill: int) -> None:
        if num_prefill == 0 and num_decode > 0:
            self.decode_seconds = self._mix(self.decode_seconds, seconds)
        elif num_prefill > 0 and num_decode == 0:
            self.token_seconds = self._mix(self.token_seconds, seconds / num_prefill)
        elif num_prefill > 0 and self.decode_seconds is not None:
            extra = max(seconds - self.decode_seconds, 0.0)
            self.token_seconds = self._mix(self.token_seconds, extra / num_prefill)

    @property
    def limit(self) -> int:
        d, p = self.decode_seconds, self.token_seconds
        if d is None or not p:
            return self.initial
        return max(self.low, min(self.high, round(self.BALANCE * d / p)))

    def _mix(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.smoothing * (new - old)
