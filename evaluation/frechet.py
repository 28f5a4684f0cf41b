"""Fréchet distance between Gaussians, and feature statistics accumulated in float64."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """`||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))` (Dowson & Landau 1982; FID, Heusel et al.
    2017). `tr (S1 S2)^(1/2)` is the sum of the square roots of the eigenvalues of the symmetric
    `F^T S2 F`, which is similar to `S1 S2` when `S1 = F F^T` (`F` the Cholesky factor, or the
    symmetric square root if `S1` is singular); eigenvalues that rounding makes negative are taken
    as 0, so the result stays real."""
    mu1, mu2 = (np.asarray(m, dtype=np.float64).reshape(-1) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    shapes = [mu1.shape, sigma1.shape, mu2.shape, sigma2.shape]
    d = len(mu1)
    if shapes != [(d,), (d, d), (d,), (d, d)]:
        raise ValueError(f"statistics of different dimensions: mu1 {shapes[0]}, sigma1 {shapes[1]}, "
                         f"mu2 {shapes[2]}, sigma2 {shapes[3]}")
    try:  # S1 = L L^T: L^T S2 L is similar to S1 S2 too, and a Cholesky factor is cheaper than a root
        factor = np.linalg.cholesky(sigma1)
    except np.linalg.LinAlgError:  # singular S1: its symmetric square root
        vals, vecs = np.linalg.eigh((sigma1 + sigma1.T) / 2)
        factor = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    middle = factor.T @ sigma2 @ factor
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


class FeatureStats:
    """Streaming mean and covariance of features: the count, the sum and the sum of outer
    products, all float64, so that processes can add theirs (`reduce`) before `mu_sigma`."""

    def __init__(self, dim: int, device=None):
        self.n = torch.zeros((), dtype=torch.float64, device=device)
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> None:
        f = features.flatten(1) if features.ndim > 1 else features.reshape(-1, 1)  # (0, d) too: a process with no seeds
        f = f.to(self.total.device, torch.float64)
        if f.shape[1] != len(self.total):
            raise ValueError(f"features of dimension {f.shape[1]}, expected {len(self.total)}")
        self.n += len(f)
        self.total += f.sum(0)
        self.outer += f.T @ f

    def reduce(self, accelerator) -> "FeatureStats":
        """Add up the sums of every process (a no-op with one process)."""
        for name in ("n", "total", "outer"):
            setattr(self, name, accelerator.reduce(getattr(self, name), reduction="sum"))
        return self

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and the unbiased covariance."""
        n = float(self.n)
        if n < 2:
            raise ValueError(f"statistics need at least two samples, got {int(n)}")
        mu = self.total / n
        sigma = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()


def save_stats(path, mu, sigma) -> Path:
    """An `.npz` with keys `mu` and `sigma` (as pytorch-fid and EDM read them), written whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # renamed when complete: a reader never sees half
    with open(partial, "wb") as f:
        np.savez(f, mu=np.asarray(mu, dtype=np.float64), sigma=np.asarray(sigma, dtype=np.float64))
    os.replace(partial, path)
    return path


def load_stats(path) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file does not exist: {path}")
    with np.load(path) as data:
        missing = [k for k in ("mu", "sigma") if k not in data.files]
        if missing:
            raise ValueError(f"{path} has no {' or '.join(missing)} (keys: {', '.join(data.files) or 'none'})")
        return data["mu"], data["sigma"]
