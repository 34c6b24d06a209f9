"""Every command in README.md and docs/*.md stays true (issue 17, point 5).

Each fenced shell or Python block is either run here, against one live server on the bundled
demo model (the documented :8000 rewritten to its port), and must succeed; or it carries a
`<!-- docs-test: skip: <why> -->` marker. Either way every command in it that names one of our
programs must name things that exist: `gpt2-serve` subcommands and flags, `python -m
benchmarks.X` / `baselines.X` flags, `python scripts/X.py` flags (through their own argparse
parsers, stopped before they do anything) and `make` targets (`make -n`). Python blocks must
compile and shell blocks pass `bash -n`. tests/docs/test_blocks.py shows each check failing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import BUNDLED_MODEL
from tests.docs.blocks import PYTHON, SHELL, Block, read_blocks, simple_commands, untagged_commands
from tests.docs.checks import BIN, ROOT, for_this_machine, parser_check
from tests.e2e.server import Server

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = read_blocks(PAGES, ROOT)
CODE = [b for b in BLOCKS if b.lang in SHELL | PYTHON]
RUN_SECONDS = 120  # one block, on a loaded 2-core machine; each takes a few seconds


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Started on the first block that needs it: the documented model, on a free port."""
    log = tmp_path_factory.mktemp("docs-server") / "server.log"
    srv = Server(BUNDLED_MODEL, log)
    yield srv
    srv.stop()


def test_the_docs_have_code_blocks_to_check() -> None:
    assert len(PAGES) >= 7 and len(CODE) >= 20  # README + docs/: a failed read is not a pass
    run = [b for b in CODE if b.skip_reason is None]
    assert any("curl" in b.text for b in run) and any(b.lang in PYTHON for b in run)


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # [text](path#anchor): the path part


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(page: Path) -> None:
    targets = [t for t in LINK.findall(page.read_text()) if "://" not in t]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.where)
def test_commands_are_in_tagged_blocks(block: Block) -> None:
    lines = untagged_commands(block)
    assert not lines, f"{block.where}: commands in a block with no language; tag it bash: {lines}"


@pytest.mark.parametrize("block", CODE, ids=lambda b: b.where)
def test_every_command_names_what_exists(block: Block) -> None:
    block.skip_reason  # noqa: B018 - a malformed marker fails here, naming the block
    if block.lang in PYTHON:
        compile(block.text, block.where, "exec")
        return
    syntax = subprocess.run(["bash", "-n"], input=block.text, text=True, capture_output=True)
    assert syntax.returncode == 0, f"{block.where}: {syntax.stderr}"
    problems = [p for argv in simple_commands(block.text) if (p := parser_check(argv))]
    assert not problems, f"{block.where}:\n" + "\n".join(problems)


@pytest.mark.parametrize("block", [b for b in CODE if b.marker is None], ids=lambda b: b.where)
def test_runnable_blocks_run(block: Block, server: Server) -> None:
    script = for_this_machine(block.text, server.port)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if block.lang in PYTHON:
        argv = [sys.executable, "-c", script]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", script]
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_SECONDS
    )
    report = (
        f"--- as run:\n{script}\n"
        f"--- stdout:\n{done.stdout[-2000:]}\n--- stderr:\n{done.stderr[-2000:]}"
    )
    assert done.returncode == 0, f"{block.where} exited {done.returncode}\n{report}"
    # gpt2-serve bench exits 0 whatever its requests did; its report names the first failure.
    assert "first error:" not in done.stdout, f"{block.where}: requests failed\n{report}"
