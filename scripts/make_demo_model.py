"""Write a GPT-2 checkpoint with random weights and the real GPT-2 tokenizer (50,257 tokens,
context 1024), offline in seconds: for smoke tests and benchmarks that need gpt2's exact
vocabulary and shape. Its text is noise; the trained model the service serves by default is
app/models/gpt2-demo (scripts/train_demo_model.py).

    python scripts/make_demo_model.py .cache/demo-gpt2               # 4 layers, 256 dims
    python scripts/make_demo_model.py --shape 124m .cache/gpt2-124m  # GPT-2 124M's shape
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.checkpoints import make_checkpoint

SHAPES = {
    "small": {"n_layer": 4, "n_embd": 256, "n_head": 4},
    "124m": {"n_layer": 12, "n_embd": 768, "n_head": 12},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", type=Path, default=Path(".cache/demo-gpt2"))
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    args = parser.parse_args()
    if (args.target / "config.json").exists():
        print(f"{args.target} already holds a checkpoint")
        return
    make_checkpoint(args.target, seed=0, **SHAPES[args.shape])
    print(f"wrote a random-weight GPT-2 ({args.shape}: {SHAPES[args.shape]}) to {args.target}")


if __name__ == "__main__":
    main()
