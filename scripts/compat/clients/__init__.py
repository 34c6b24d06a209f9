"""The clients `make compat` runs, one module each: what to install, the command line that runs
it against the server (bounded, offline, synthetic data), and how to read its report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from scripts.compat.verdict import ClientReport


@dataclass(frozen=True)
class Target:
    """What every client is pointed at, and the small workload they all run."""

    url: str  # http://127.0.0.1:PORT, no trailing slash
    model: str  # the served model name (/v1/models)
    tokenizer: Path  # the demo model's directory: vocab.json + merges.txt, loaded locally
    context_window: int  # prompt + output must fit (256 for the demo model)
    requests: int
    concurrency: int
    prompt_tokens: int
    output_tokens: int


class Client(Protocol):
    name: str
    version: str
    requirement: str  # what pip installs
    python: tuple[tuple[int, int], tuple[int, int]]  # the interpreters it supports

    def command(self, bin_dir: Path, target: Target, out_dir: Path) -> list[str]: ...

    def environment(self) -> dict[str, str | None]:
        """Variables to set (None: to unset) on top of the offline defaults."""
        ...

    def read_report(self, out_dir: Path, stdout: str) -> ClientReport: ...
