"""A learned multistep solver (docs/conventions.md §12): DPM-Solver++'s data-prediction update in sigma
space with fitted weights of the current and past denoiser outputs at each step,

    x_{n+1} = (s_{n+1} / s_n) x_n + (1 - s_{n+1} / s_n) sum_j b_{n,j} D_{n-j}

(so `x = sum_j b_{n,j} D_{n-j}` on a step to 0). `b_n = (1)` is DDIM; `b_n = (1 + 1/(2r), -1/(2r))`,
`r = h_{n-1} / h_n` in log sigma, is DPM-Solver++(2M), the start of a fit and the weights without one.
The weights and the grid are fitted together on teacher solutions (`tuning.learned_solver`), as the
learned solvers of S4S (Frankel et al. 2025) fit theirs. One denoiser call per step; the update is the
same in a flow's t (DDIM's step is), so the solver takes no `time`.
"""
from __future__ import annotations

import torch

from .steps import ask


def dpmpp_2m_weights(sigmas, order: int = 2) -> torch.Tensor:
    """The weights `b` (steps, order) of DPM-Solver++(2M) on `sigmas`: first order on the first step and
    on a step to 0, `(1 + 1/(2r), -1/(2r))` between; the columns past the second are 0."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if order < 1:
        raise ValueError(f"the learned solver's order must be at least 1, got {order}")
    weights = torch.zeros(len(sigmas) - 1, order, dtype=torch.float64)
    weights[:, 0] = 1.0
    if order == 1:
        return weights
    h = (sigmas[:-2] / sigmas[1:-1]).log()  # h_n for each step but the last, whose next sigma may be 0
    for n in range(1, len(sigmas) - 1):
        if sigmas[n + 1] > 0:
            r = h[n - 1] / (sigmas[n] / sigmas[n + 1]).log()
            weights[n, 0], weights[n, 1] = 1 + 1 / (2 * r), -1 / (2 * r)
    return weights


def check_weights(weights, steps: int) -> torch.Tensor:
    """`weights` as a float64 tensor (steps, order), differentiably; another shape or a NaN is refused."""
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.ndim != 2 or len(weights) != steps or weights.shape[1] < 1:
        raise ValueError(f"the learned solver's weights have shape {tuple(weights.shape)}; a grid of {steps} "
                         f"steps needs ({steps}, order)")
    if not torch.isfinite(weights).all():
        raise ValueError(f"the learned solver's weights are not finite: {weights.tolist()}")
    return weights


def learned(x, sigmas, weights=None, afs: bool = False):
    """The learned multistep solver above down `sigmas` with `weights` (steps, order; None: DPM-Solver++(2M)'s,
    `dpmpp_2m_weights`). afs: the first D analytic (`ask`)."""
    weights = dpmpp_2m_weights(sigmas) if weights is None else check_weights(weights, len(sigmas) - 1)
    history = []  # newest first
    for n, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x, denoised = yield from ask(x, sigma, afs and n == 0)
        history = [denoised, *history][:weights.shape[1]]
        combined = sum(weights[n, j].to(denoised) * d for j, d in enumerate(history))
        ratio = sigma_next / sigma
        x = ratio * x + (1 - ratio) * combined
    return x
