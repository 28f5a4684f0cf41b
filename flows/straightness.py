"""How straight a rectified flow's paths are (Liu et al. 2022, "Flow Straight and Fast", eq. 4)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .velocity import velocity as _velocity


def straightness(velocity, noise: torch.Tensor, steps: int = 100, time_scale: float = 1.0) -> float:
    """`S = mean_i mean ((noise - x0) - v(x_{t_i}, t_i))^2` along the Euler path of the flow ODE from
    `x_1 = noise` to `x0`, `steps` uniform steps `t_i = 1 - i / steps`,
    `x_{t_i - 1/steps} = x_{t_i} - v(x_{t_i}, t_i) / steps`; the inner mean is over every element.
    0 means straight paths, on which one Euler step is exact.

    velocity: the model, called `velocity(x_t, t * time_scale)` with `t` of shape (B,)
        (as `rectified_flow.velocity`). noise: a batch of standard-normal draws.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a whole number of at least 1, got {steps}")
    h = 1.0 / steps
    x, first, total, total_sq = noise, None, 0, 0
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((len(noise),), 1.0 - i * h, dtype=noise.dtype, device=noise.device)
            v = _velocity(velocity, x, t, time_scale)
            x = x - h * v
            # S is the variance over the steps of v (their mean is (noise - x0)); accumulated shifted
            # by the first velocity, so that straight paths give 0 without cancellation.
            first = v.double() if first is None else first
            u = v.double() - first
            total, total_sq = total + u, total_sq + u ** 2
    return float((total_sq / steps - (total / steps) ** 2).mean())


def record_straightness(velocity, shape, out_dir, time_scale: float = 1.0, n: int = 256, steps: int = 50,
                        seed: int = 0) -> float:
    """`straightness` of `velocity` on `n` noises of shape `shape` (the generator seeded `seed`),
    written with its settings to `out_dir/straightness.json`; returns it."""
    device = next(velocity.parameters()).device
    noise = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)).to(device)
    value = straightness(velocity, noise, steps=steps, time_scale=time_scale)
    record = {"straightness": value, "noises": n, "steps": steps, "seed": seed}
    (Path(out_dir) / "straightness.json").write_text(json.dumps(record, indent=2) + "\n")
    return value
