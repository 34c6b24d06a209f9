"""PNG figures of a run (matplotlib, Agg backend, imported only when plots are asked for).

- throughput_latency.png: three panels (TTFT, ITL, end-to-end latency); in each, for each
  target, a line through its sweep points of output tokens/s (x) against the p50 (solid) and
  p99 (dashed) latency (y), each point labelled with its concurrency or rate.
- ttft_cdf.png: the distribution of time to first token, one curve per target and point.
- itl_cdf.png: the same for inter-token gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.bench.runner import TargetResult


def load_pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit("--plot-dir needs matplotlib: pip install 'gpt2-serve[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax: Any, samples: Sequence[float], label: str) -> None:
    if not samples:
        return
    xs = sorted(s * 1000 for s in samples)
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.step(xs, ys, where="post", label=label)


def write_plots(directory: Path, targets: Sequence[TargetResult], title: str) -> list[Path]:
    plt = load_pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = (("TTFT (ms)", "ttft"), ("ITL (ms)", "itl"), ("end-to-end (ms)", "e2e"))
    for ax, (ylabel, metric) in zip(axes, panels, strict=True):
        for t in targets:
            xs = [p.stats.output_tokens_per_s for p in t.points]
            for quantile, style in (("p50", "-"), ("p99", "--")):
                ys = [getattr(getattr(p.stats, metric), quantile) * 1000 for p in t.points]
                ax.plot(xs, ys, marker="o", linestyle=style, label=f"{t.target.label} {quantile}")
            for p, x in zip(t.points, xs, strict=True):
                y = getattr(p.stats, metric).p50 * 1000
                level = p.point.name.split("=")[1]
                ax.annotate(level, (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    paths.append(directory / "throughput_latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    for name, attr, xlabel in (
        ("ttft_cdf.png", "ttft_samples", "time to first token (ms)"),
        ("itl_cdf.png", "itl_samples", "inter-token gap (ms)"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for t in targets:
            for p in t.points:
                _cdf(ax, getattr(p.stats, attr), f"{t.target.label} {p.point.name}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of samples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(title, fontsize=8)
        fig.tight_layout()
        paths.append(directory / name)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
