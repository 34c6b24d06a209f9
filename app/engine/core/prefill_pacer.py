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

Both come from one model of a step, fitted by least squares to the last WINDOW steps:

    seconds = base + per_row * decode_rows + p * prompt_tokens

base is what any step pays (on a CPU, streaming the weights once: about 60 ms of a lone decode step
here), so d = base + per_row * rows for the rows decoding now. Cruder estimates went wrong in a
burst of arrivals: p taken as seconds / tokens from an idle 32-token prefill was 4.3 ms, twice
the marginal 2.1 ms (it carried base), and d kept from a lone stream was charged to the prompt
tokens of the first steps with 16 rows. When the window cannot tell the three apart (a steady
batch with no prompts), the last fit that could stands.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

Step = tuple[int, int, float]  # (decode rows, prompt tokens, seconds)
MIN_SPREAD = 1e-2


@dataclass(frozen=True)
class StepCost:
    base: float
    per_row: float  # each decode row
    per_token: float  # each prompt token (p)

    def decode_step(self, rows: int) -> float:
        return self.base + self.per_row * rows


class PrefillPacer:
    BALANCE = 1.5  # c = BALANCE * d / p (see the module docstring)
    WINDOW = 64

    def __init__(self, initial: int, low: int, high: int) -> None:
        self.initial, self.low, self.high = initial, low, high
        self.steps: deque[Step] = deque()
        self.equations = NormalEquations()  # of self.steps, kept step by step
        self.cost: StepCost | None = None
        self.decode_rows = 0  # rows decoding in the latest step: the next step's, about

    def observe(self, seconds: float, num_decode: int, num_prefill: int) -> None:
        step = (num_decode, num_prefill, seconds)
        self.steps.append(step)
        self.equations.add(step)
        if len(self.steps) > self.WINDOW:
            self.equations.add(self.steps.popleft(), sign=-1.0)
        self.decode_rows = num_decode
        fitted = self.equations.solve()
        if fitted is not None:
            self.cost = fitted

    @property
    def limit(self) -> int:
        if self.cost is None:
            return self.initial
        d = self.cost.decode_step(max(self.decode_rows, 1))
        return max(self.low, min(self.high, round(self.BALANCE * d / self.cost.per_token)))


class NormalEquations:
    """Sums of x x^T and x * seconds over steps, x = (1, rows, tokens): the least-squares
    system, updated in O(1) as a step enters or leaves the window (this runs every engine step;
    refitting the window from scratch cost 120 µs a step, a few % of a GPU decode step).
    The x products are integers, so removing a step undoes its add exactly in float64; only
    the seconds sums carry rounding, ~1e-16 relative per step."""

    def __init__(self) -> None:
        self.xx = [[0.0] * 3 for _ in range(3)]
        self.xy = [0.0] * 3

    def add(self, step: Step, sign: float = 1.0) -> None:
        rows, tokens, seconds = step
        x = (1.0, float(rows), float(tokens))
        for i in range(3):
            self.xy[i] += sign * x[i] * seconds
            for j in range(3):
                self.xx[i][j] += sign * x[i] * x[j]

    def solve(self) -> StepCost | None:
        """The fitted costs; None unless the steps tell the three apart and every cost comes
        out non-negative (p positive)."""
        a, y = self.xx, self.xy
        det = _det3(a)
        # det / product of the diagonal is 1 for unrelated columns and 0 for dependent ones,
        # whatever the units. Below MIN_SPREAD the window does not tell the costs apart (a
        # steady batch of 31-33 rows gives 5e-4, and its per-row cost would be noise), so the
        # caller keeps its last fit.
        if det <= MIN_SPREAD * a[0][0] * a[1][1] * a[2][2]:
            return None
        # Cramer's rule: three unknowns.
        base, per_row, per_token = (
            _det3([[*row[:col], y[i], *row[col + 1 :]] for i, row in enumerate(a)]) / det
            for col in range(3)
        )
        if base < 0 or per_row < 0 or per_token <= 0:
            return None
        return StepCost(base, per_row, per_token)


def fit_step_cost(steps: Iterable[Step]) -> StepCost | None:
    """Least squares of seconds on (1, rows, tokens) over `steps` (see NormalEquations.solve)."""
    equations = NormalEquations()
    for step in steps:
        equations.add(step)
    return equations.solve()


def _det3(m: list[list[float]]) -> float:
    return (
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    )
