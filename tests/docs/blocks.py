"""The fenced code blocks of the Markdown docs, and the simple commands inside the shell ones.

A block is run by the docs test unless the line just before its fence (blank lines allowed
between) carries a marker saying why not:

    <!-- docs-test: skip: needs a GPU -->

Pure functions of the text, so the self-tests can feed them a made-up page.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
# Shell control operators: where one simple command ends and the next begins.
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# A line of an untagged block that starts like one of these is a command someone will paste.
COMMAND_WORDS = {"make", "gpt2-serve", "curl", "python", "python3", "pip", "docker", "kubectl"}


@dataclass(frozen=True)
class Block:
    path: str  # as given, for messages
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None  # the marker's text after "docs-test:", or None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        """Why the block is not run, or None when it is run. Raises on a malformed marker."""
        if self.marker is None:
            return None
        kind, _, reason = self.marker.partition(":")
        if kind.strip() != "skip" or not reason.strip():
            raise ValueError(
                f"{self.where}: bad marker {self.marker!r}: write "
                "'<!-- docs-test: skip: <why it cannot run here> -->'"
            )
        return reason.strip()


def blocks(text: str, path: str) -> list[Block]:
    """Every fenced block of a Markdown text, with its language and the marker before it."""
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, lang = opening.groups()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j])
            j += 1
        out.append(Block(path, i + 1, lang.lower(), "\n".join(body) + "\n", _marker(lines, i)))
        i = j + 1
    return out


def _marker(lines: list[str], fence_index: int) -> str | None:
    k = fence_index - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    found = MARKER.search(lines[k]) if k >= 0 else None
    return found.group(1) if found else None


def logical_lines(script: str) -> list[str]:
    """Lines with backslash continuations joined."""
    joined: list[str] = []
    pending = ""
    for line in script.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    if pending:
        joined.append(pending)
    return [line for line in joined if line.strip()]


def simple_commands(script: str) -> list[list[str]]:
    """Each simple command of a shell script as argv, comments dropped, leading `NAME=value`
    assignments dropped (they set the environment, not the command)."""
    commands: list[list[str]] = []
    for line in logical_lines(script):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in OPERATORS:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    stripped = [_without_assignments(argv) for argv in commands]
    return [argv for argv in stripped if argv]


def _without_assignments(argv: list[str]) -> list[str]:
    i = 0
    while i < len(argv) and ASSIGNMENT.match(argv[i]):
        i += 1
    return argv[i:]


def untagged_commands(block: Block) -> list[str]:
    """Lines of a block with no language that read like shell commands (tag those `bash`)."""
    if block.lang:
        return []
    return [
        line
        for line in block.text.splitlines()
        if line.split() and line.split()[0] in COMMAND_WORDS
    ]


def read_blocks(paths: list[Path], root: Path) -> list[Block]:
    return [
        block
        for path in paths
        for block in blocks(path.read_text(encoding="utf-8"), str(path.relative_to(root)))
    ]
