"""Benchmark output: markdown tables of a metric against NFE, log-log plots, and BENCHMARKS.md
assembled from the per-suite sections in `benchmarks/`."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {cpu}, {os.cpu_count()} cores, torch threads: {torch.get_num_threads()}, {gpu}, "
            f"torch {torch.__version__}")


def section(title: str, body: str) -> str:
    """A BENCHMARKS.md section: its title, the exact command that made it, the machine, the body."""
    command = "python " + " ".join(sys.argv)
    return f"## {title}\n\nCommand: `{command}`  \nMachine: {machine()}\n\n{body.strip()}\n"


def nfe_table(results: list[dict], metric: str, targets: list[int], digits: int = 3) -> str:
    """Rows: one per label; columns: the target NFEs. A cell shows the metric, and the NFE
    actually used when the sampler cannot meet the target exactly (Heun: odd NFE only)."""
    labels = list(dict.fromkeys(r["label"] for r in results))
    lines = ["| sampler | " + " | ".join(f"NFE {t}" for t in targets) + " |",
             "|---|" + "---|" * len(targets)]
    for label in labels:
        cells = []
        for t in targets:
            hit = [r for r in results if r["label"] == label and r["target_nfe"] == t]
            if not hit:
                cells.append("–")
                continue
            r = hit[0]
            cell = f"{r[metric]:.{digits}g}"
            cells.append(cell if r["nfe"] == t else f"{cell} ({r['nfe']:g})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def nfe_plot(results: list[dict], metric: str, path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["label"] for r in results):
        rows = sorted((r["nfe"], r[metric]) for r in results if r["label"] == label)
        ax.plot(*zip(*rows), marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=metric, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def spread_plot(series: dict[str, list[tuple[float, float, float]]], path, ylabel: str, title: str,
                line: float | None = None) -> Path:
    """One curve per label of `(NFE, mean, std)` points with error bars of one std, log-scaled; `line`: a
    dashed horizontal reference (1 for a ratio to converged sampling)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        x, mean, std = zip(*sorted(points))
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label)
    if line is not None:
        ax.axhline(line, color="0.5", linestyle="--", linewidth=1)
    ax.set(yscale="log", xlabel="NFE", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def side_by_side(grids: dict[str, torch.Tensor], path, nrow: int = 4) -> Path:
    """One image grid per label, side by side, labelled above (images in [-1, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    fig, axes = plt.subplots(1, len(grids), figsize=(2.2 * len(grids), 2.6))
    for ax, (label, images) in zip(axes if len(grids) > 1 else [axes], grids.items()):
        grid = make_grid(((images.float() + 1) / 2).clamp(0, 1), nrow=nrow, padding=1, pad_value=0.5)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def trajectory_plot(paths: dict[str, torch.Tensor], data: torch.Tensor, path, shown: int = 200) -> Path:
    """2-D ODE paths, one panel per label: `paths[label]` of shape (steps + 1, n, 2) from the noise
    (grey dots) to the samples (blue), over the data (light); the picture of rectified flow
    straightening its paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(paths), figsize=(3.6 * len(paths), 3.6), squeeze=False)
    for ax, (label, xs) in zip(axes[0], paths.items()):
        xs = xs[:, :shown].double().cpu().numpy()
        ax.scatter(data[:, 0], data[:, 1], s=1, color="0.85")
        ax.plot(xs[:, :, 0], xs[:, :, 1], color="tab:orange", alpha=0.25, linewidth=0.6)
        ax.scatter(xs[0, :, 0], xs[0, :, 1], s=3, color="0.4")
        ax.scatter(xs[-1, :, 0], xs[-1, :, 1], s=3, color="tab:blue")
        ax.set(title=label, xlim=(-3.2, 3.2), ylim=(-3.2, 3.2), aspect="equal", xticks=[], yticks=[])
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def scatter_panels(points: dict[str, torch.Tensor], data: torch.Tensor, path, shown: int = 2000) -> Path:
    """2-D samples, one panel per label, over the data (light)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(3.2 * len(points), 3.2), squeeze=False)
    for ax, (label, x) in zip(axes[0], points.items()):
        x = x[:shown].double().cpu().numpy()
        ax.scatter(data[:shown, 0], data[:shown, 1], s=1, color="0.8")
        ax.scatter(x[:, 0], x[:, 1], s=1, color="tab:blue")
        ax.set(title=label, xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xticks=[], yticks=[])
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def assemble(sections_dir, out) -> Path:
    """BENCHMARKS.md: a header, then every `*.md` section of `sections_dir` in name order."""
    sections = sorted(Path(sections_dir).glob("*.md"))
    body = "\n\n".join(p.read_text().strip() for p in sections)
    header = ("# fewstep benchmarks\n\nEvery number below comes from the command printed in its section; "
              "the sections are written by `scripts/benchmark.py` (and the other benchmark scripts) into "
              "`benchmarks/`, and this file is assembled from them.\n")
    Path(out).write_text(header + "\n" + body + "\n")
    return Path(out)
