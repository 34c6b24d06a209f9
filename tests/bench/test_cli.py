"""The bench command line: flag errors, and no torch in the load generator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.bench.cli import build_parser, main, points_from, targets_from, workload_from


def test_flags_build_targets_points_and_workload() -> None:
    args = build_parser().parse_args(
        ["--url", "http://a:1", "--baseline-url", "http://b:2", "--compare", "llama=http://c:3",
         "--request-rate", "2", "4.5", "--prompt-len-range", "16", "64", "--output-len", "32"]
    )  # fmt: skip
    assert [(t.label, t.url) for t in targets_from(args)] == [
        ("ours", "http://a:1"),
        ("baseline", "http://b:2"),
        ("llama", "http://c:3"),
    ]
    assert [p.name for p in points_from(args)] == ["rate=2/s", "rate=4.5/s"]
    w = workload_from(args)
    assert w.describe() == {"prompt_len": "uniform[16, 64]", "output_len": "32", "seed": 0}
    default = build_parser().parse_args(["--url", "http://a:1"])
    assert [p.name for p in points_from(default)] == ["concurrency=1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--compare", "nourl"], "NAME=URL"),
        (["--compare", "ours=http://x:1"], "must differ"),
        (["--baseline-url", "localhost:9"], "must start with http"),
        (["--concurrency", "0"], "must be >= 1"),
        (["--request-rate", "1", "--concurrency", "2"], "not allowed with"),
        (["--num-requests", "3", "--duration", "2"], "not allowed with"),
        (["--dataset", "/nonexistent/x.jsonl"], "No such file"),
    ],
)
def test_bad_flags_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--url", "http://127.0.0.1:9", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_dataset_line_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    with pytest.raises(SystemExit):
        main(["--url", "http://127.0.0.1:9", "--dataset", str(path)])
    assert "d.jsonl:2" in capsys.readouterr().err


def test_the_load_generator_never_imports_torch() -> None:
    code = (
        "import sys, app.bench.cli, app.bench.plots, app.bench.report, app.bench.runner; "
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
