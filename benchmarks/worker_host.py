"""The worker's host cost per row of a decode step, by phase, in process.

What a generated token costs the worker outside the model, measured without HTTP, clients or
sockets, so a change to the step loop can be judged in seconds: a tiny GPT-2 (1 layer, 16 dims,
the vocabulary of GPT-2), N sequences decoding at once (32-token prompts, EOS ignored), and the
step loop's phases timed in this thread's CPU time (as the worker's own
gpt2_engine_host_seconds_total; the model's other threads are not counted): scheduling,
preparing the inputs, the forward pass and sampling (the model: reported, not counted as
host), postprocessing, building the step's message and encoding it as the worker sends it.

    python -m benchmarks.worker_host                 # 64 and 256 rows
    python -m benchmarks.worker_host --rows 256 --steps 200 --repeats 5
    python -m benchmarks.worker_host --stub-model    # the bookkeeping without a CPU model

Prints the median over repeats of µs per row for each phase and the host total (everything
but the model).

With --stub-model the forward pass and sampling are stand-ins that return at once (every row's
token is the same id): what the bookkeeping costs where the model runs on a device, as on a GPU
node. On CPU the model's pass over its weights, KV cache and logits leaves the caches cold for
the Python that follows it, so the host phases cost more there than they would beside a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from app.engine.config import EngineConfig
from app.engine.protocol import AddRequest, SamplingParams
from app.engine.wire import frame
from app.engine.worker.engine_core import EngineCore
from tests.checkpoints import make_checkpoint

MODEL_PHASES = ("forward", "sample")


def _timed(spent: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.thread_time() - start

    return wrapper


STUB_TOKEN = 11  # what the stub model samples for every row (EOS is ignored anyway)


class _StubSampler:
    """Every row's token is STUB_TOKEN, no logprobs; nothing is checked on a device."""

    last_invalid = None

    def __call__(self, logits: torch.Tensor, rows: list[Any]) -> tuple[torch.Tensor, list[None]]:
        return torch.full((len(rows),), STUB_TOKEN, dtype=torch.long), [None] * len(rows)


def _stub_forward(inputs: Any) -> tuple[torch.Tensor, list[Any]]:
    return torch.zeros(len(inputs.sampling), 1), []  # one 'logit' a sampled row


class _TimedSampler:
    """The runner's sampler, its calls timed; its attributes read through."""

    def __init__(self, sampler: Any, timed: Callable[..., Any]) -> None:
        self._sampler, self._timed = sampler, timed

    def __call__(self, *args: Any) -> Any:
        return self._timed(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sampler, name)


def measure(model: Path, rows: int, steps: int, stub_model: bool = False) -> dict[str, float]:
    """µs per row of each phase over `steps` decode steps of `rows` sequences."""
    config = EngineConfig(
        model=str(model),
        device="cpu",
        max_num_seqs=rows,
        kv_cache_tokens=max(rows * (32 + steps + 48), 1024),
    )
    core = EngineCore(config)
    if stub_model:
        core.runner.forward = _stub_forward  # type: ignore[method-assign]
        core.runner.sampler = _StubSampler()  # type: ignore[assignment]
    params = SamplingParams(max_tokens=steps + 8, temperature=0, ignore_eos=True)
    for i in range(rows):
        prompt = tuple((7 * i + j) % 50000 for j in range(32))
        core.add_request(AddRequest(f"r{i}", prompt, params, handle=i + 1))
    while core.scheduler.waiting or any(not s.is_decoding for s in core.scheduler.running):
        core.step()  # prefill every prompt first: only decode steps are measured
    spent: dict[str, float] = defaultdict(float)
    runner, scheduler = core.runner, core.scheduler
    runner.prepare = _timed(spent, "prepare", runner.prepare)  # type: ignore[method-assign]
    runner.forward = _timed(spent, "forward", runner.forward)  # type: ignore[method-assign]
    runner.sampler = _TimedSampler(runner.sampler, _timed(spent, "sample", runner.sampler))  # type: ignore[assignment]
    scheduler.schedule = _timed(spent, "schedule", scheduler.schedule)  # type: ignore[method-assign]
    scheduler.advance = _timed(spent, "postprocess", scheduler.advance)  # type: ignore[method-assign]
    scheduler.resolve = _timed(spent, "postprocess", scheduler.resolve)  # type: ignore[method-assign]
    counted = 0
    start = time.thread_time()
    with torch.inference_mode():  # as the worker's loop runs (app/engine/worker/main.py)
        for _ in range(steps):
            result = core.step()
            t = time.thread_time()
            frame(result)
            spent["encode"] += time.thread_time() - t
            counted += len(result)
    spent["step (all)"] = time.thread_time() - start
    out = {name: 1e6 * s / counted for name, s in spent.items()}
    out["host"] = out["step (all)"] - sum(out.get(p, 0.0) for p in MODEL_PHASES)
    out["rest"] = out["host"] - sum(
        v for k, v in out.items() if k not in (*MODEL_PHASES, "host", "step (all)")
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--stub-model",
        action="store_true",
        help="forward pass and sampling return at once: the bookkeeping alone",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        make_checkpoint(model, seed=0, n_layer=1, n_embd=16, n_head=2)
        print("# python -m benchmarks.worker_host " + " ".join(sys.argv[1:]))
        for rows in args.rows:
            runs = [measure(model, rows, args.steps, args.stub_model) for _ in range(args.repeats)]
            names = ["host", "schedule", "prepare", "postprocess", "encode", "rest",
                     "forward", "sample"]  # fmt: skip
            print(f"rows {rows}: µs per row, median of {args.repeats} (host = all but the model)")
            for name in names:
                values = [r.get(name, 0.0) for r in runs]
                spread = f"({min(values):.2f}-{max(values):.2f})"
                print(f"  {name:12s} {statistics.median(values):8.2f}   {spread}")


if __name__ == "__main__":
    main()
