"""How straight a rectified flow's paths are (Liu et al. 2022, "Flow Straight and Fast", eq. 4)."""
from __future__ import annotations

import torch

from .rectified_flow import velocity as _velocity


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
