"""2-D toy data sets: `n` points as a float32 tensor of shape (n, 2) (a tensor is itself a map-style
data set), the same for the same `seed`, centred and scaled by one factor to unit variance per
coordinate on average (the shape is kept)."""
from __future__ import annotations

import math

import torch


def _generator(n: int, seed: int) -> torch.Generator:
    if int(n) != n or n < 2:
        raise ValueError(f"n must be a whole number of at least 2, got {n}")
    return torch.Generator().manual_seed(int(seed))


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """`(x - mean) / s` with `s^2` the variance averaged over the two coordinates."""
    x = x - x.mean(0)
    return (x / x.pow(2).mean().sqrt()).float()


def moons(n: int = 10000, seed: int = 0, noise: float = 0.05) -> torch.Tensor:
    """Two interleaved half circles, `(cos a, sin a)` and `(1 - cos a, 1/2 - sin a)`, `a ~ U[0, pi]`,
    half the points on each, plus Gaussian noise of standard deviation `noise`."""
    g = _generator(n, seed)
    a = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    upper = torch.arange(n) < (n + 1) // 2
    x = torch.where(upper, a.cos(), 1 - a.cos())
    y = torch.where(upper, a.sin(), 0.5 - a.sin())
    return _standardise(torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=g, dtype=torch.float64))


def checkerboard(n: int = 10000, seed: int = 0, cells: int = 4) -> torch.Tensor:
    """Uniform on the dark squares of a `cells` x `cells` board (cell `(i, j)` dark when `i + j`
    is even), `cells` even."""
    if cells < 2 or cells % 2:
        raise ValueError(f"cells must be even and at least 2, got {cells}")
    g = _generator(n, seed)
    row = torch.randint(cells, (n,), generator=g)
    col = 2 * torch.randint(cells // 2, (n,), generator=g) + row % 2  # i + j even
    corner = torch.stack([col, row], 1).double()
    return _standardise(corner + torch.rand(n, 2, generator=g, dtype=torch.float64))


def gaussians8(n: int = 10000, seed: int = 0, radius: float = 2.0, std: float = 0.1) -> torch.Tensor:
    """An equal mixture of 8 Gaussians `N(radius (cos 2 pi k/8, sin 2 pi k/8), std^2 I)`."""
    g = _generator(n, seed)
    angle = 2 * math.pi / 8 * torch.randint(8, (n,), generator=g).double()
    centres = radius * torch.stack([angle.cos(), angle.sin()], 1)
    return _standardise(centres + std * torch.randn(n, 2, generator=g, dtype=torch.float64))
