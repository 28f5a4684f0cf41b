"""Writing samples: the raw array (`.npz`) and a picture (an image grid, or a scatter plot for
vector data)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def save_grid(images: torch.Tensor, path, min_tile: int = 64, columns: int | None = None) -> Path:
    """A PNG grid of images in [-1, 1] (square-ish, or `columns` a row), each tile enlarged (nearest) to at
    least `min_tile` pixels so that small images can be seen."""
    from torchvision.utils import save_image

    images = ((images.float().cpu() + 1) / 2).clamp(0, 1)
    scale = max(1, math.ceil(min_tile / images.shape[-1]))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    save_image(images, str(path), nrow=columns or math.ceil(math.sqrt(len(images))), padding=2, pad_value=0.5)
    return Path(path)


def save_scatter(points: torch.Tensor, path, title: str = "") -> Path:
    """A scatter plot of the first two coordinates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = points.reshape(len(points), -1)[:, :2].float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6)
    ax.set_title(title)
    ax.set_aspect("equal")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def save_samples(samples: torch.Tensor, out_dir, title: str = "", rows: list | None = None,
                 **metadata) -> tuple[Path, Path]:
    """Write `samples.npz` (key `samples`, float32, plus `metadata`) and `samples.png` to
    `out_dir`; return both paths. Images (B, C, H, W) are clamped to [-1, 1] first, so the array
    holds exactly what the picture shows; vector data is written as it is. rows: the picture's rows as lists
    of sample indices (one row per class), each cut to the shortest's length; None: a square-ish grid."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 4:
        samples = samples.clamp(-1, 1)
    npz = out_dir / "samples.npz"
    np.savez(npz, samples=samples.float().cpu().numpy(), **{k: np.asarray(v) for k, v in metadata.items()})
    png = out_dir / "samples.png"
    if samples.ndim == 4 and rows:
        columns = min(map(len, rows))
        save_grid(samples[[i for row in rows for i in row[:columns]]], png, columns=columns)
    elif samples.ndim == 4:
        save_grid(samples, png)
    else:
        save_scatter(samples, png, title)
    return npz, png
