"""Write a small GPT-2 checkpoint with random weights and the real GPT-2 tokenizer, so the
service can start on a fresh machine with no network. Its text is noise: serve real GPT-2 with
GPT2_MODEL=gpt2 (hub) or a local checkpoint directory.

    python scripts/make_demo_model.py .cache/demo-gpt2
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.checkpoints import make_checkpoint


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/demo-gpt2")
    make_checkpoint(target, n_layer=4, n_embd=256, n_head=4, seed=0)
    print(f"wrote a random-weight GPT-2 (4 layers, 256 dims) to {target}")


if __name__ == "__main__":
    main()
