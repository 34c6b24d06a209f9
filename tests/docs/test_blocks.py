"""The docs test's own parts, on made-up pages: each check must be able to fail."""

from __future__ import annotations

import subprocess

import pytest

from tests.docs.blocks import blocks, simple_commands, untagged_commands
from tests.docs.checks import BIN, for_this_machine, parser_check
from tests.e2e.server import free_port

PAGE = """# A page

<!-- docs-test: skip: needs a GPU -->

```bash
GPT2_MODEL=gpt2 make serve   # a comment
gpt2-serve bench --url http://127.0.0.1:8000 \\
    --concurrency 1 8 && echo done &
```

```python
print("hi")
```

<!-- docs-test: skip -->
```sh
true
```

```
make mutation
```
"""


def test_blocks_carry_language_line_and_marker() -> None:
    found = blocks(PAGE, "page.md")
    assert [(b.lang, b.line) for b in found] == [("bash", 5), ("python", 11), ("sh", 16), ("", 20)]
    assert found[0].skip_reason == "needs a GPU" and found[1].skip_reason is None
    with pytest.raises(ValueError, match=r"page\.md:16: bad marker 'skip'"):
        _ = found[2].skip_reason  # a skip must say why
    assert untagged_commands(found[3]) == ["make mutation"]


def test_simple_commands_split_operators_and_drop_comments_and_assignments() -> None:
    found = blocks(PAGE, "page.md")
    assert simple_commands(found[0].text) == [
        ["make", "serve"],
        ["gpt2-serve", "bench", "--url", "http://127.0.0.1:8000", "--concurrency", "1", "8"],
        ["echo", "done"],
    ]


@pytest.mark.parametrize(
    "command",
    [
        "gpt2-serve serve --no-such-flag",
        "gpt2-serve serve --max-num-seqs lots",
        "gpt2-serve no-such-command --port 1",
        "gpt2-serve bench --url http://x --concurrency 0",
        "python -m benchmarks.engine_bench --no-such-flag",
        "python -m baselines.seed_server --model m --no-such-flag",
        "python scripts/soak.py --no-such-flag",
        "python scripts/no_such_script.py",
        "make no-such-target",
        "bash benchmarks/no_such_script.sh",
    ],
)
def test_a_command_naming_what_does_not_exist_fails(command: str) -> None:
    assert parser_check(simple_commands(command)[0]) is not None


@pytest.mark.parametrize(
    "command",
    [
        "gpt2-serve --help",
        "gpt2-serve serve --port 8011 --max-num-seqs 4",
        "gpt2-serve bench --url http://x --concurrency 1 8 --prompt-len 64",
        "python -m benchmarks.engine_bench --batch 1 32 --gen-len 128",
        "python scripts/soak.py --seconds 180",
        "make soak SOAK_SECONDS=180",
        "bash benchmarks/gpu_check.sh",
        "curl -s localhost:8000/health",  # not ours: nothing to parse
    ],
)
def test_a_command_naming_what_exists_passes(command: str) -> None:
    assert parser_check(simple_commands(command)[0]) is None


def test_a_run_is_pointed_at_the_test_server_and_fails_on_an_http_error() -> None:
    script = "curl -s localhost:8000/v1/models -H 'a: b' | head -c 100\n.venv/bin/gpt2-serve -h\n"
    port = free_port()  # nothing listens there
    rewritten = for_this_machine(script, port)
    assert f"curl --fail-with-body --max-time 60 -s 127.0.0.1:{port}/v1/models" in rewritten
    assert f"\n{BIN}/gpt2-serve -h" in rewritten
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", rewritten], capture_output=True)
    assert done.returncode != 0  # the documented command failing fails the docs test
