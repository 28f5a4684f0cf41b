"""The step generators of the fixed-grid samplers (docs/conventions.md §4), in EDM's sigma space, and the
adaptive reference solver.

A step generator `run(x, sigmas, **options)` yields `(x, sigma)` whenever it needs `D(x, sigma)`, receives
back `(x, D)` (the point that was evaluated, which a driver may have changed, e.g. a pipeline that blends a
known region back in, and its denoised value), continues from that point and returns the final sample.
`solvers.solve` drives it with a denoiser, `pipelines.FewstepScheduler` one diffusers `step()` at a time.
With `h = sigma_next - sigma` and `d = (x - D) / sigma`, the ODE is `dx/dsigma = d`. The generators whose
result depends on the variable they step in (Heun, iPNDM, AMED) take `time`, the model's
`spaces.StepTime`: they step `y = s(sigma) x` in `tau`, with `dy/dtau = (y - D) / tau` (sigma itself for
a diffusion model, t for a flow); DDIM and DPM-Solver++ give the same steps in any. Every generator takes
`afs`: the first D analytic instead of a network call (`ask`). The arithmetic is on 0-d tensors, so
gradients reach `x`, the sigmas and anything inside the denoiser.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from .spaces import SIGMA_TIME, StepTime

TINY = torch.finfo(torch.float64).tiny


def ask(x, sigma, afs: bool):
    """Yield `(x, sigma)` for `D(x, sigma)` and return the `(x, D)` sent back; with `afs`, the analytical
    first step of AMED (Zhou et al. 2024), answer without the network: `d = x / sqrt(1 + sigma^2)`,
    i.e. `D = x - sigma x / sqrt(1 + sigma^2)` (the noise read as the unit-variance VP input). Only
    for a start from pure noise at a large sigma, where the data's mean is about 0 next to `x`."""
    if afs:
        return x, x - sigma * x / (1 + sigma ** 2).sqrt()
    return (yield x, sigma)


def ddim(x, sigmas, eta: float = 0.0, afs: bool = False, generator=None):
    """DDIM (Song et al. 2021) from `sigma` to `sigma_next`: `eps = (x - D) / sigma`,
    `c = eta (sigma_next / sigma) sqrt(sigma^2 - sigma_next^2)`,
    `x_next = D + sqrt(sigma_next^2 - c^2) eps + c z`. `eta = 0` is deterministic (one Euler step of
    the ODE), `eta = 1` is DDPM-ancestral; in VP space this is diffusers' `DDIMScheduler`, whose
    `std_dev_t` is `c / sqrt(1 + sigma_next^2)`. With `eta > 0`, `z` is drawn at every step (as
    DDIMScheduler does, even where `c = 0`) in float32 from `generator`, as diffusers draws it
    for a float32 model, then upcast, so a seed gives DDIMScheduler's noise. afs: the first D
    analytic (`ask`), one call fewer."""
    if not 0 <= eta <= 1:
        raise ValueError(f"ddim eta must be in [0, 1], got {eta}")
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x, denoised = yield from ask(x, sigma, afs and i == 0)
        eps = (x - denoised) / sigma
        if eta == 0:
            x = denoised + sigma_next * eps
            continue
        c = eta * (sigma_next / sigma) * (sigma ** 2 - sigma_next ** 2).sqrt()
        # sqrt(sigma_next^2 - c^2) is >= 0 but for rounding; kept off 0, where sqrt's slope is infinite
        x = denoised + (sigma_next ** 2 - c ** 2).clamp(min=TINY).sqrt() * eps
        z = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        x = x + c * z.to(x.dtype)
    return x


def heun(x, sigmas, afs: bool = False, time: StepTime = SIGMA_TIME):
    """Heun's second-order method (Karras et al. 2022, Algorithm 1, deterministic) in the model's
    time: with `f = (y - D) / tau`, an Euler predictor `y + h f`, then the trapezoid `y + h (f + f') / 2`,
    `h = tau_next - tau`; the last step to sigma = 0 is Euler. On a flow (`FLOW_TIME`) it is Heun in t
    on the velocity. afs: the first `d` analytic (`ask`), one call fewer."""
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        tau, tau_next = time.tau(sigma), time.tau(sigma_next)
        h = tau_next - tau
        x, denoised = yield from ask(x, sigma, afs and i == 0)
        # in place on fresh temporaries only: fewer allocations, the same values and gradients; h / 2 is exact
        y = time.to_model(x, sigma)
        f = (y - denoised).div_(tau)
        y_euler = (h * f).add_(y)
        if float(sigma_next) == 0:  # a float: quicker than a tensor comparison
            x = time.to_sigma(y_euler, sigma_next)
        else:
            x_euler, denoised_next = yield time.to_sigma(y_euler, sigma_next), sigma_next
            f_next = (time.to_model(x_euler, sigma_next) - denoised_next).div_(tau_next)
            x = time.to_sigma((f + f_next).mul_(h / 2).add_(y), sigma_next)
    return x


def multistep(x, sigmas, step: Callable, afs: bool, scales=None):
    """Drive a one-call-per-step update down `sigmas`: `x = step(x, sigma, sigma_next, D, scale)`, the
    step keeping its own history; `scale` is 1, or `scales[i]` (AMED-Plugin's `c`). afs: the first D
    analytic (`ask`)."""
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x, denoised = yield from ask(x, sigma, afs and i == 0)
        x = step(x, sigma, sigma_next, denoised, 1.0 if scales is None else scales[i])
    return x


def dpmpp_2m_step() -> Callable:
    """DPM-Solver++(2M)'s update with its history (`dpmpp_2m`), the data term scaled:
    `x_next = (sigma_next / sigma) x - scale expm1(-h) D'`; `x = D` on a step to sigma = 0."""
    previous = h_previous = None

    def step(x, sigma, sigma_next, denoised, scale):
        nonlocal previous, h_previous
        if (sigma_next == 0).all():  # AMED-Plugin's intermediate sigma_next may be one per sample
            return denoised
        h = (sigma / sigma_next).log()
        corrected = denoised
        if previous is not None:
            r = h_previous / h
            corrected = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        previous, h_previous = denoised, h
        return (sigma_next / sigma) * x - scale * (-h).expm1() * corrected

    return step


def dpmpp_2m(x, sigmas, afs: bool = False):
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep, `lambda = -log sigma`:
    `x_next = (sigma_next / sigma) x - expm1(-h) D'` with `h = lambda_next - lambda` and
    `D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}`, `r = h_{i-1} / h`; first order on the first step and
    on the last step to sigma = 0 (where it gives `x = D`). afs: the first D analytic (`ask`)."""
    return (yield from multistep(x, sigmas, dpmpp_2m_step(), afs))


ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                   4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def ipndm_step(max_order: int = 4, time: StepTime = SIGMA_TIME) -> Callable:
    """iPNDM's update with its history of slopes (`ipndm`), scaled, in the model's time:
    `y_next = y + scale h sum_j b_j f_{i-j}`, `f = (y - D) / tau`, `h = tau_next - tau`."""
    if max_order not in ADAMS_BASHFORTH:
        raise ValueError(f"ipndm max_order must be 1, 2, 3 or 4, got {max_order}")
    history = []  # newest first

    def step(x, sigma, sigma_next, denoised, scale):
        y, tau = time.to_model(x, sigma), time.tau(sigma)
        history[:] = [(y - denoised) / tau, *history][:max_order]
        slope = sum(b * f_j for b, f_j in zip(ADAMS_BASHFORTH[len(history)], history))
        return time.to_sigma(y + scale * (time.tau(sigma_next) - tau) * slope, sigma_next)

    return step


def ipndm(x, sigmas, max_order: int = 4, afs: bool = False, time: StepTime = SIGMA_TIME):
    """Improved PNDM (Zhang & Chen 2023): explicit Adams–Bashforth on the slope `f` in the model's
    time with the fixed coefficients of orders 1–4, `y_next = y + h sum_j b_j f_{i-j}`, lower orders
    while the history is short. max_order: 1 to 4. afs: the first `d` analytic (`ask`)."""
    return (yield from multistep(x, sigmas, ipndm_step(max_order, time), afs))


def dopri5(denoise, x, sigmas, rtol: float = 1e-5, atol: float = 1e-5):
    """Adaptive Dormand–Prince 5(4) (torchdiffeq) on `dx/d(log sigma) = x - D(x, sigma)` from
    `sigmas[0]` to the smallest positive sigma, then, if the list ends at 0, `x = D(x, sigma)` (an
    Euler step to 0). Only the two ends of the list matter; the reference solver. rtol, atol: positive;
    tolerances too small for the arithmetic make the step size collapse, which is refused in one line."""
    from torchdiffeq import odeint

    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < tol < math.inf:
            raise ValueError(f"dopri5 {name} must be a positive number, got {tol!r}")

    def slope(u, y):
        if not torch.isfinite(u):  # torchdiffeq's step from a tolerance scale of 0 or a denormal is NaN
            raise FloatingPointError(f"dopri5's step size collapsed (log sigma {float(u)}): rtol={rtol}, atol={atol} "
                                     f"are too small for {y.dtype} arithmetic")
        return y - denoise(y, u.exp())

    s_end = sigmas[-2] if sigmas[-1] == 0 else sigmas[-1]
    if s_end < sigmas[0]:
        log_sigmas = torch.stack([sigmas[0], s_end]).log().to(x.device)
        x = odeint(slope, x, log_sigmas, rtol=rtol, atol=atol, method="dopri5")[-1]
    return denoise(x, s_end) if sigmas[-1] == 0 else x
