"""What the benchmark sends: one RequestSpec (prompt, output length) per request.

Prompt lengths. A prompt of N tokens is N words of real English text (the opening of "A Tale
of Two Cities", lightly edited), each word preceded by a space: " it was the best of times ...".
Every word of that passage, with its leading space, is one token of GPT-2's BPE vocabulary
(tests/bench checks it with the real tokenizer), so for GPT-2 the prompt is exactly N tokens;
other tokenizers give about N. No tokenizer is needed on the client side, and the server's
usage chunk reports the true count (stats show it next to the requested one). Each request
starts at a different word of the passage (a seeded shuffle of every start, dealt again when
used up), so prompts differ from one another from the first few tokens: two of them never share
more than 13 leading tokens (the passage's longest repeated run). With random starts some
concurrent requests had the same prompt, and a server that shares cached prefixes (this one)
would have skipped their prefill, an edge the workload should not hand to one target.

With --shared-prefix-len P every prompt starts with the same P words (the passage's opening),
then its own N: a system prompt every request repeats, for measuring prefix reuse.

Output lengths become max_tokens; with --ignore-eos every request generates exactly that many.

A dataset is a JSONL file: one object a line, {"prompt": "..."} with an optional "output_len"
(or "max_tokens"); blank lines are skipped; anything else is a WorkloadError naming the line.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PASSAGE = (
    "it was the best of times it was the worst of times it was the age of wisdom it was the age "
    "of folly it was the epoch of belief it was the epoch of doubt it was the season of light it "
    "was the season of darkness it was the spring of hope it was the winter of despair we had "
    "everything before us we had nothing before us we were all going direct to heaven we were "
    "all going direct the other way in short the period was so far like the present period that "
    "some of its greatest authorities insisted on its being received for good or for evil in the "
    "highest degree of comparison only there were a king with a large jaw and a queen with a "
    "plain face on the throne of England there were a king with a large jaw and a queen with a "
    "fair face on the throne of France in both countries it was clearer than crystal to the "
    "lords of the state preserves of bread and fishes that things in general were settled for ever"
)
WORDS = tuple(PASSAGE.split())


class WorkloadError(ValueError):
    """A workload that cannot be built: bad lengths or a bad dataset line."""


@dataclass(frozen=True)
class RequestSpec:
    prompt: str
    prompt_len: int | None  # requested prompt tokens; None when the prompt came from a dataset
    output_len: int  # max_tokens


@dataclass(frozen=True)
class LengthDist:
    """Fixed (low == high) or uniform over [low, high], both ends included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low < 1 or self.high < self.low:
            raise WorkloadError(f"lengths need 1 <= low <= high, got {self.low}..{self.high}")

    @classmethod
    def fixed(cls, n: int) -> LengthDist:
        return cls(n, n)

    def sample(self, rng: random.Random) -> int:
        return self.low if self.low == self.high else rng.randint(self.low, self.high)

    def describe(self) -> str:
        return str(self.low) if self.low == self.high else f"uniform[{self.low}, {self.high}]"


@dataclass(frozen=True)
class DatasetEntry:
    prompt: str
    output_len: int | None


def text_prompt(num_tokens: int, rng: random.Random) -> str:
    """num_tokens words of the passage from a random start, each after a space (see above)."""
    return passage_words(rng.randrange(len(WORDS)), num_tokens)


def passage_words(start: int, num_tokens: int) -> str:
    return "".join(" " + WORDS[(start + i) % len(WORDS)] for i in range(num_tokens))


def load_dataset(path: Path) -> list[DatasetEntry]:
    entries: list[DatasetEntry] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            entries.append(_parse_line(line, f"{path}:{lineno}"))
    if not entries:
        raise WorkloadError(f"{path}: no requests in the dataset")
    return entries


def _parse_line(line: str, where: str) -> DatasetEntry:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise WorkloadError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise WorkloadError(f'{where}: "prompt" must be a non-empty string')
    output_len = obj.get("output_len", obj.get("max_tokens"))
    if output_len is not None and (
        isinstance(output_len, bool) or not isinstance(output_len, int) or output_len < 1
    ):
        raise WorkloadError(f'{where}: "output_len" must be a positive integer')
    return DatasetEntry(prompt, output_len)


@dataclass(frozen=True)
class Workload:
    """The request stream. The same seed gives the same requests, in the same order, so every
    target of a comparison and every sweep point sees the same workload."""

    output: LengthDist
    prompt: LengthDist | None = None  # synthetic prompts; None: from dataset
    dataset: tuple[DatasetEntry, ...] = ()
    seed: int = 0
    # Tokens every synthetic prompt starts with (the same words each time), before its own
    # prompt-length words: a system prompt, for measuring prefix reuse.
    shared_prefix: int = 0

    def __post_init__(self) -> None:
        if (self.prompt is None) == (not self.dataset):
            raise WorkloadError("a workload needs exactly one of prompt lengths or a dataset")
        if self.shared_prefix < 0 or (self.shared_prefix and self.prompt is None):
            raise WorkloadError("a shared prefix needs synthetic prompts and a length >= 0")

    def specs(self, stream: int = 0) -> Iterator[RequestSpec]:
        """An endless, seeded stream of requests (`stream` separates e.g. warm-up from the run).
        A dataset is walked in a seeded shuffled order, reshuffled each time round."""
        rng = random.Random(f"{self.seed}/{stream}")
        order: list[int] = []
        starts: list[int] = []
        prefix = passage_words(0, self.shared_prefix)
        while True:
            if self.prompt is not None:
                if not starts:
                    starts = list(range(len(WORDS)))
                    rng.shuffle(starts)
                n = self.prompt.sample(rng)
                prompt = prefix + passage_words(starts.pop(), n)
                yield RequestSpec(prompt, self.shared_prefix + n, self.output.sample(rng))
                continue
            if not order:
                order = list(range(len(self.dataset)))
                rng.shuffle(order)
            entry = self.dataset[order.pop()]
            output_len = entry.output_len or self.output.sample(rng)
            yield RequestSpec(entry.prompt, None, output_len)

    def describe(self) -> dict[str, object]:
        prompt = self.prompt.describe() if self.prompt else f"dataset ({len(self.dataset)} lines)"
        described: dict[str, object] = {
            "prompt_len": prompt,
            "output_len": self.output.describe(),
            "seed": self.seed,
        }
        if self.shared_prefix:
            described["shared_prefix_len"] = self.shared_prefix
        return described
