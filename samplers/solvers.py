"""Samplers over a denoiser and a sigma list (docs/conventions.md §4), in the EDM sigma space.

Every fixed-grid sampler is written once, as a generator: it yields `(x, sigma)` whenever it needs
`D(x, sigma)` and receives the denoised value back, and returns the final sample. `sample()` drives
it with a denoiser; a diffusers scheduler can drive the same generator one `step()` at a time.
With `h = sigma_next - sigma` and `d = (x - D) / sigma`, the ODE is `dx/dsigma = d`.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor


def ddim(x, sigmas, eta: float = 0.0, generator=None):
    """DDIM (Song et al. 2021) from `sigma` to `sigma_next`: `eps = (x - D) / sigma`,
    `c = eta (sigma_next / sigma) sqrt(sigma^2 - sigma_next^2)`,
    `x_next = D + sqrt(sigma_next^2 - c^2) eps + c z`. `eta = 0` is deterministic (one Euler step of
    the ODE), `eta = 1` is DDPM-ancestral; in VP space this is diffusers' `DDIMScheduler`, whose
    `std_dev_t` is `c / sqrt(1 + sigma_next^2)`. With `eta > 0`, `z` is drawn at every step (as
    DDIMScheduler does, even where `c = 0`) in float32 from `generator`, as diffusers draws it
    for a float32 model, then upcast, so a seed gives DDIMScheduler's noise."""
    if not 0 <= eta <= 1:
        raise ValueError(f"ddim eta must be in [0, 1], got {eta}")
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = yield x, s[i]
        eps = (x - denoised) / s[i]
        c = eta * (s[i + 1] / s[i]) * math.sqrt(s[i] ** 2 - s[i + 1] ** 2)
        x = denoised + math.sqrt(max(s[i + 1] ** 2 - c ** 2, 0.0)) * eps  # >= 0 but for rounding
        if eta > 0:
            z = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            x = x + c * z.to(x.dtype)
    return x


def euler(x, sigmas):
    """Euler's method on the probability-flow ODE: `x_next = x + h d`."""
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        d = (x - (yield x, s[i])) / s[i]
        x = x + (s[i + 1] - s[i]) * d
    return x


def heun(x, sigmas):
    """Heun's second-order method (Karras et al. 2022, Algorithm 1, deterministic): an Euler
    predictor, then the trapezoid `x + h (d + d') / 2`; the last step to sigma = 0 is Euler."""
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        h = s[i + 1] - s[i]
        d = (x - (yield x, s[i])) / s[i]
        x_euler = x + h * d
        if s[i + 1] == 0:
            x = x_euler
        else:
            d_next = (x_euler - (yield x_euler, s[i + 1])) / s[i + 1]
            x = x + h * (d + d_next) / 2
    return x


def dpmpp_2m(x, sigmas):
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep, `lambda = -log sigma`:
    `x_next = (sigma_next / sigma) x - expm1(-h) D'` with `h = lambda_next - lambda` and
    `D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}`, `r = h_{i-1} / h`; first order on the first step and
    on the last step to sigma = 0 (where it gives `x = D`)."""
    s = sigmas.tolist()
    previous, h_previous = None, None
    for i in range(len(s) - 1):
        denoised = yield x, s[i]
        if s[i + 1] == 0:
            x = denoised
            continue
        h = math.log(s[i] / s[i + 1])
        corrected = denoised
        if previous is not None:
            r = h_previous / h
            corrected = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (s[i + 1] / s[i]) * x - math.expm1(-h) * corrected
        previous, h_previous = denoised, h
    return x


ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                   4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def ipndm(x, sigmas, max_order: int = 4):
    """Improved PNDM (Zhang & Chen 2023): explicit Adams–Bashforth on `d` with the fixed
    coefficients of orders 1–4, `x_next = x + h sum_j b_j d_{i-j}`, lower orders while the history
    is short. max_order: 1 to 4."""
    if max_order not in ADAMS_BASHFORTH:
        raise ValueError(f"ipndm max_order must be 1, 2, 3 or 4, got {max_order}")
    s = sigmas.tolist()
    history = []  # newest first
    for i in range(len(s) - 1):
        d = (x - (yield x, s[i])) / s[i]
        history = [d, *history][:max_order]
        slope = sum(b * d_j for b, d_j in zip(ADAMS_BASHFORTH[len(history)], history))
        x = x + (s[i + 1] - s[i]) * slope
    return x


def dopri5(denoise, x, sigmas, rtol: float = 1e-5, atol: float = 1e-5):
    """Adaptive Dormand–Prince 5(4) (torchdiffeq) on `dx/d(log sigma) = x - D(x, sigma)` from
    `sigmas[0]` to the smallest positive sigma, then, if the list ends at 0, `x = D(x, sigma)` (an
    Euler step to 0). Only the two ends of the list matter; the reference solver."""
    from torchdiffeq import odeint

    s_end = float(sigmas[-2] if sigmas[-1] == 0 else sigmas[-1])
    if s_end < sigmas[0]:
        log_sigmas = torch.tensor([math.log(float(sigmas[0])), math.log(s_end)], dtype=torch.float64, device=x.device)
        x = odeint(lambda u, y: y - denoise(y, math.exp(float(u))), x, log_sigmas, rtol=rtol, atol=atol,
                   method="dopri5")[-1]
    return denoise(x, s_end) if sigmas[-1] == 0 else x


@dataclass(frozen=True)
class FixedGrid:
    """A sampler on a given sigma grid: its step generator and its NFE as a function of the
    number of steps and of whether the grid ends at sigma = 0."""

    steps: Callable
    nfe: Callable[[int, bool], int] = lambda n, ends_at_zero: n


FIXED_GRID = {
    "ddim": FixedGrid(ddim),
    "euler": FixedGrid(euler),
    "heun": FixedGrid(heun, lambda n, ends_at_zero: 2 * n - int(ends_at_zero)),
    "dpmpp_2m": FixedGrid(dpmpp_2m),
    "ipndm": FixedGrid(ipndm),
}
ADAPTIVE = {"dopri5": dopri5}
SAMPLER_NAMES = (*FIXED_GRID, *ADAPTIVE)


def _lookup(name: str):
    fn = FIXED_GRID[name].steps if name in FIXED_GRID else ADAPTIVE.get(name)
    if fn is None:
        raise ValueError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLER_NAMES)}")
    return fn


def check_options(name: str, fn, options: dict) -> None:
    """Refuse keywords the sampler function `fn` does not take, naming them and the ones it does."""
    params = [p for p in inspect.signature(fn).parameters if p not in ("x", "sigmas", "denoise", "generator")]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for sampler {name!r}; it takes: {', '.join(params) or 'none'}")


def check_sigmas(sigmas) -> torch.Tensor:
    """Sigmas as a float64 tensor: at least two, finite, strictly decreasing, positive but the last
    (which may be 0)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"need at least one step (two sigmas), got sigmas of shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all():
        raise ValueError(f"sigmas must be finite, got {sigmas.tolist()}")
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(f"sigmas must be strictly decreasing, got {sigmas.tolist()}")
    if sigmas[-1] < 0:
        raise ValueError(f"sigmas must be positive (the last may be 0), got {sigmas.tolist()}")
    return sigmas


def nfe(name: str, sigmas, **options) -> int | None:
    """The exact number of denoiser calls `sample(name, ..., sigmas, **options)` makes; `None` for
    an adaptive sampler (count its calls with a `callback`)."""
    check_options(name, _lookup(name), options)
    if name in ADAPTIVE:
        return None
    sigmas = check_sigmas(sigmas)
    return FIXED_GRID[name].nfe(len(sigmas) - 1, bool(sigmas[-1] == 0))


def steps_for_nfe(name: str, target: int, **options) -> int:
    """The largest number of steps (on a grid ending at 0) whose NFE is at most `target`."""
    if name not in FIXED_GRID:
        raise ValueError(f"sampler {name!r} has no fixed grid, so no step count for an NFE budget")
    steps = 0
    while FIXED_GRID[name].nfe(steps + 1, True) <= target:
        steps += 1
    if steps == 0:
        raise ValueError(f"sampler {name!r} needs more than {target} NFE for one step")
    return steps


def run_steps(steps, denoise: Callable) -> torch.Tensor:
    """Drive a step generator: answer each `(x, sigma)` it yields with `denoise(x, sigma)`."""
    request = next(steps)
    try:
        while True:
            request = steps.send(denoise(*request))
    except StopIteration as done:
        return done.value


def sample(name: str, denoiser, noise: torch.Tensor, sigmas, generator=None, callback=None, **options) -> torch.Tensor:
    """Sample with sampler `name` from standard-normal `noise` (scaled here by `sigmas[0]`) down the
    decreasing `sigmas`, and return the final `x` in the dtype of `noise`.

    denoiser: `(x, sigma) -> D`. generator: a `torch.Generator` or a list of one per sample, for
    the stochastic samplers (`ddim` with `eta > 0`). callback: called after every denoiser call
    with a dict `{"nfe", "x", "sigma", "denoised"}`. options: the sampler's keywords (e.g. `eta`,
    `max_order`, `rtol`, `atol`). The arithmetic runs in float64 (float32 on MPS).
    """
    fn = _lookup(name)
    check_options(name, fn, options)
    sigmas = check_sigmas(sigmas)
    if not torch.isfinite(noise).all():
        raise ValueError(f"the noise has {int((~torch.isfinite(noise)).sum())} NaN or inf values")
    work = torch.float32 if noise.device.type == "mps" else torch.float64
    x = noise.to(work) * float(sigmas[0])
    calls = 0

    def denoise(x, sigma):
        nonlocal calls
        denoised = denoiser(x, sigma)
        calls += 1
        if not torch.isfinite(denoised).all():
            raise FloatingPointError(f"the model output has NaN or inf at sigma={float(sigma):.6g} (denoiser call {calls})")
        if callback is not None:
            callback({"nfe": calls, "x": x, "sigma": float(sigma), "denoised": denoised})
        return denoised

    with torch.no_grad():
        if name in ADAPTIVE:
            x = fn(denoise, x, sigmas, **options)
        else:
            if "generator" in inspect.signature(fn).parameters:
                options = {**options, "generator": generator}
            x = run_steps(fn(x, sigmas, **options), denoise)
    return x.to(noise.dtype)


def sample_seeds(name: str, denoiser, seeds, sigmas, shape, batch_size: int = 64, device=None, callback=None,
                 **options):
    """Yield batches of samples, sample `i` drawn from its own seed `seeds[i]` (its noise and any
    sampler noise come from `torch.Generator().manual_seed(seeds[i])`), so the samples depend
    neither on the batch size nor on how the seeds are split over processes or devices."""
    seeds = list(seeds)
    for start in range(0, len(seeds), batch_size):
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start:start + batch_size]]
        noise = randn_tensor((len(generators), *shape), generator=generators, device=device, dtype=torch.float32)
        yield sample(name, denoiser, noise, sigmas, generator=generators, callback=callback, **options)
