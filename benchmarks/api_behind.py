"""Host cost of the HTTP process when it is behind the engine, as on a GPU node.

On this CPU machine the worker is the bottleneck, so the HTTP process keeps up and every token
is its own write. On a GPU the worker outruns it. This runs the HTTP process at nice 19 so the
worker outruns it here too, and reports CPU us per streamed token at 64 and 256 streams: the
figure that write coalescing (app/api/openai_stream.py) is for.

    python -m benchmarks.api_behind LABEL
"""

import os
import sys
import tempfile
from pathlib import Path

from benchmarks.host_cost import _server_pid, run_point
from benchmarks.serve_bench import server
from tests.checkpoints import make_checkpoint


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "this tree"
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        make_checkpoint(model, seed=0, n_layer=1, n_embd=16, n_head=2)
        serve = [
            "-m", "app.cli", "serve", "--model", str(model), "--device", "cpu",
            "--max-num-seqs", "256", "--max-num-batched-tokens", "4096", "--log-level", "WARNING",
        ]  # fmt: skip
        out = Path(tmp)
        with server(serve, "/ready", out / "server.log") as url:
            pid = _server_pid(url)
            os.setpriority(os.PRIO_PROCESS, pid, 19)
            for streams in (64, 256):
                r = run_point(url, streams, 256, pid, out, 1)
                print(
                    f"{label}: {streams} streams  {r['tokens_per_s']:.0f} tok/s  "
                    f"API {r['api_us_per_token']:.1f} us/token  API busy {r['api_busy']:.0%}"
                )
    print("command: python -m benchmarks.api_behind " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
