"""What the docs test does with a documented command: check that what it names exists (every
command, run or not), and rewrite it to run here (the blocks that are run).

Parsing goes through the programs' own argparse parsers, stopped right after they parse: a
subcommand, flag or choice that does not exist fails as it would for a user, and nothing starts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the environment running the tests: gpt2-serve, python
PYTHONS = {"python", "python3"}
# python -m <module> for these packages is parsed; other modules (pip, ...) are not ours.
OUR_PACKAGES = ("app.", "benchmarks.", "baselines.", "scripts.")


class Parsed(BaseException):
    """Raised by parse_args once it has parsed: the program stops before doing anything. A
    BaseException, so that a program's `except Exception` around its start cannot swallow it."""


@contextlib.contextmanager
def parse_only() -> Iterator[None]:
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        original(self, *args, **kwargs)
        raise Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]


def _program_name(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def parser_check(argv: list[str]) -> str | None:
    """None when the command names things that exist (or is not one we can check), else why
    not. Checks `gpt2-serve ...`, `python -m <our module> ...`, `python scripts/X.py ...`,
    `make TARGET ...`, and that a program or `bash` script given by a relative path exists."""
    name = _program_name(argv[0])
    if name == "gpt2-serve":
        from app.cli import main

        return _parses(lambda: main(argv[1:]), argv)
    if name in PYTHONS:
        return _python_check(argv)
    if name == "make":
        return _make_check(argv[1:])
    if name == "bash" and len(argv) > 1 and not argv[1].startswith("-"):
        return _exists(argv[1])
    if argv[0].startswith(("./", "scripts/", "benchmarks/")):
        return _exists(argv[0])
    return None


def _exists(relative: str) -> str | None:
    if relative.startswith(("/", "./build")):  # absolute or built elsewhere: not ours to check
        return None
    return None if (ROOT / relative).exists() else f"{relative} does not exist"


def _python_check(argv: list[str]) -> str | None:
    args = argv[1:]
    if len(args) >= 2 and args[0] == "-m" and args[1].startswith(OUR_PACKAGES):
        module = args[1]
        return _parses(lambda: _run_module(module, args[1:]), argv)
    if args and args[0].startswith("scripts/") and args[0].endswith(".py"):
        script = ROOT / args[0]
        if not script.exists():
            return f"{args[0]} does not exist"
        return _parses(lambda: _run_path(script, args), argv)
    return None


def _run_module(module: str, argv: list[str]) -> None:
    # runpy warns when the code it is about to run was imported already (a test imported the
    # package's __main__): run it from a fresh import, and put the imported one back after.
    imported = sys.modules.pop(module + ".__main__", None)
    try:
        with _argv(argv):
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        if imported is not None:
            sys.modules[module + ".__main__"] = imported


def _run_path(script: Path, argv: list[str]) -> None:
    with _argv(argv):
        runpy.run_path(str(script), run_name="__main__")


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = list(argv)
    try:
        yield
    finally:
        sys.argv = saved


def _parses(call: Callable[[], object], argv: list[str]) -> str | None:
    out, err = io.StringIO(), io.StringIO()
    try:
        with parse_only(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            call()
    except Parsed:
        return None
    except SystemExit as exc:  # --help exits 0; a parse error exits 2 with its message
        if exc.code in (0, None):
            return None
        return f"{' '.join(argv)}: exit {exc.code}: {err.getvalue().strip()[-500:]}"
    return f"{' '.join(argv)}: ran without parsing its arguments"


def _make_check(args: list[str]) -> str | None:
    """`make -n` prints what a target would run without running it; an unknown target fails."""
    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        return f"make {' '.join(args)}: {done.stderr.strip()[-500:]}"
    return None


DOCUMENTED_HOST = re.compile(r"\b(?:localhost|127\.0\.0\.1|0\.0\.0\.0):8000\b")


def for_this_machine(script: str, port: int) -> str:
    """A documented script as run here: the documented server (:8000) is the test's server,
    `.venv/bin/` is the environment running the tests, and curl fails on an HTTP error (a
    user reads the error; the test needs the exit status)."""
    script = DOCUMENTED_HOST.sub(f"127.0.0.1:{port}", script)
    script = re.sub(r"(?<![\w/])\.venv/bin/", f"{BIN}/", script)
    return re.sub(r"(?m)(^|[|;&(]\s*)curl ", r"\1curl --fail-with-body --max-time 60 ", script)
