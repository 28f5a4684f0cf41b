"""AMED (Zhou et al., CVPR 2024, "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps") as
step generators of `solvers.SOLVERS`, in the model's time (`spaces.StepTime`: `t` is sigma on a diffusion
model, the flow's own t on a flow), `y = s(sigma) x`, slope `f = (y - D) / t`.

Every step from `t_n` to `t_{n+1}` evaluates once more at `s_n = t_{n+1}^r t_n^(1-r)` (on a flow
`t_n + r (t_{n+1} - t_n)`: `spaces.StepTime.between`). `amed` is the
AMED-Solver step, DPM-Solver-2 (`dpm_2`) at r = 1/2, c = 1; `amed_plugin` inserts `s_n` into a
multistep solver. `r` and `c` are numbers, one per step (a frozen table), or with `predictor` (an
`tuning.amed_predictor.AMEDPredictor`) learned per sample from the UNet's bottleneck at `t_n`: the
intermediate time is then one sigma per sample, of shape (B,), in the call to the denoiser. A step
that ends at sigma = 0 has no `s_n` (one call).
"""
from __future__ import annotations

import numbers
from contextlib import nullcontext
from functools import partial

import torch

from .contracts import StepPredictor
from .spaces import SIGMA_TIME, StepTime
from .steps import ask, dpmpp_2m_step, ipndm_step

PLUGIN_BASES = ("ipndm", "dpmpp_2m")


def per_step(sampler: str, name: str, value, steps: int, valid, rule: str) -> list:
    """`value` for each of `steps` steps: one number for all, or a sequence of one per step (tensors
    keep their gradients); each must pass `valid`, else one line naming it."""
    scalar = isinstance(value, numbers.Real) or (torch.is_tensor(value) and value.ndim == 0)
    values = [value] * steps if scalar else list(value)
    if len(values) != steps:
        raise ValueError(f"{sampler} {name} has {len(values)} values for a grid of {steps} steps")
    floats = [float(v.detach()) if torch.is_tensor(v) else float(v) for v in values]
    bad = next((v for v in floats if not valid(v)), None)
    if bad is not None:
        raise ValueError(f"{sampler} {name} must be {rule}, got {bad}")
    return values


def ratios(sampler: str, r, c, steps: int) -> tuple[list, list]:
    """The per-step `r` in (0, 1) and `c` > 0."""
    return (per_step(sampler, "r", r, steps, lambda v: 0 < v < 1, "in (0, 1)"),
            per_step(sampler, "c", c, steps, lambda v: v > 0, "positive"))


def between(sigma, sigma_next, r, time: StepTime = SIGMA_TIME):
    """AMED's intermediate point `s_n` as a sigma: `t_{n+1}^r t_n^(1-r)` in sigma time (r = 1/2 is
    DPM-Solver-2's), `t_n + r (t_{n+1} - t_n)` in a flow's t (`StepTime.between`)."""
    return time.between(sigma, sigma_next, r)


def as_predictor(sampler: str, predictor):
    """`predictor` if it is a `StepPredictor` (an AMEDPredictor), else one line (a path from the command
    line is not)."""
    if not isinstance(predictor, StepPredictor):
        raise ValueError(f"{sampler} predictor must be an AMEDPredictor (AMEDPredictor.from_pretrained(DIR)), got "
                         f"{type(predictor).__name__} {predictor!r:.80}; where options are text (the command line, a "
                         f"pipeline) give its frozen table instead, r=[...] c=[...] (tuning.amed_predictor.frozen_table)")
    return predictor


def learned(sampler: str, predictor, sigmas, r, c, afs: bool, base: str | None = None) -> None:
    """Refuse, in one line, a `predictor` made for another sampler (or `base`), `afs`, NFE or grid, and
    `r`, `c` away from their defaults beside it (it gives them)."""
    as_predictor(sampler, predictor)
    if not (isinstance(r, numbers.Real) and r == 0.5 and isinstance(c, numbers.Real) and c == 1.0):
        raise ValueError(f"{sampler} takes r and c from its predictor; drop r={r}, c={c}")
    predictor.check(sampler, sigmas, afs, base)


def watching(sampler: str, predictor, denoiser):
    """The context in which `predictor` reads `denoiser`'s bottleneck (`AMEDPredictor.watch`); none
    without a predictor. `solvers.solve` runs every sampler inside it."""
    return nullcontext() if predictor is None else as_predictor(sampler, predictor).watch(denoiser)


def intermediate(x, sigma, sigma_next, r, c, predictor, analytic: bool, time: StepTime):
    """`(s_n, c_n, s_n as the denoiser takes it)` as sigmas: from the fixed `r`, `c`, or per sample from
    `predictor` (shapes (B, 1, ..., 1), and (B,) for the call; `analytic`: the step's first D was AFS's)."""
    if predictor is None:
        mid = between(sigma, sigma_next, r, time)
        return mid, c, mid
    r, c = predictor.step_ratios(x, sigma, sigma_next, analytic)
    mid = between(sigma, sigma_next, r, time)
    return mid, c, mid.reshape(-1)


def amed(x, sigmas, r=0.5, c=1.0, afs: bool = False, predictor=None, time: StepTime = SIGMA_TIME):
    """AMED-Solver (the authors' `amed_sampler`) in the model's time: `f_n = (y_n - D(x_n, t_n)) / t_n`,
    `y_mid = y_n + (s_n - t_n) f_n`, `y_{n+1} = y_n + c (t_{n+1} - t_n) (y_mid - D(x_mid, s_n)) / s_n`;
    Euler on a step to sigma = 0. r, c: numbers or one per step. afs: the first `d` analytic (`ask`).
    predictor: an AMEDPredictor giving `(r_n, c_n)` per sample from the bottleneck features of
    `D(x_n, t_n)` (zeros after AFS), in place of r and c."""
    rs, cs = ratios("amed", r, c, len(sigmas) - 1)
    if predictor is not None:
        learned("amed", predictor, sigmas, r, c, afs)
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x, denoised = yield from ask(x, sigma, afs and i == 0)
        y, tau, tau_next = time.to_model(x, sigma), time.tau(sigma), time.tau(sigma_next)
        f = (y - denoised) / tau
        if sigma_next == 0:
            x = time.to_sigma(y + (tau_next - tau) * f, sigma_next)
            continue
        mid, c_n, asked = intermediate(x, sigma, sigma_next, rs[i], cs[i], predictor, afs and i == 0, time)
        tau_mid = time.tau(mid)
        x_mid, denoised = yield time.to_sigma(y + (tau_mid - tau) * f, mid), asked
        f_mid = (time.to_model(x_mid, mid) - denoised) / tau_mid
        x = time.to_sigma(y + c_n * (tau_next - tau) * f_mid, sigma_next)
    return x


# DPM-Solver-2 (Lu et al. 2022; EDM's and k-diffusion's `sample_dpm_2`): the midpoint at sqrt(sigma sigma_next).
dpm_2 = partial(amed, r=0.5, c=1.0, predictor=None)


def amed_plugin(x, sigmas, base: str = "ipndm", r=0.5, c=1.0, afs: bool = False, predictor=None,
                time: StepTime = SIGMA_TIME):
    """AMED-Plugin (the authors' `ipndm_sampler` / `dpm_pp_sampler` with a predictor): the multistep `base`
    (ipndm of order 4, or dpmpp_2m) on the grid with `s_n = t_{n+1}^r t_n^(1-r)` inserted in every step
    not ending at sigma = 0, one history throughout, the model's term of each step from `s_n` to
    `t_{n+1}` scaled by `c` (`h sum b_j f_j`, `expm1(-h) D'`): c = 1 is `base` on that finer grid.
    r, c: numbers or one per step. afs: the first D analytic (`ask`). predictor: as `amed`'s."""
    if base not in PLUGIN_BASES:
        raise ValueError(f"amed_plugin base must be one of {', '.join(PLUGIN_BASES)}, got {base!r}")
    rs, cs = ratios("amed_plugin", r, c, len(sigmas) - 1)
    if predictor is not None:
        learned("amed_plugin", predictor, sigmas, r, c, afs, base)
    step = ipndm_step(time=time) if base == "ipndm" else dpmpp_2m_step()
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x, denoised = yield from ask(x, sigma, afs and i == 0)
        if sigma_next == 0:
            x = step(x, sigma, sigma_next, denoised, 1.0)
            continue
        mid, c_n, asked = intermediate(x, sigma, sigma_next, rs[i], cs[i], predictor, afs and i == 0, time)
        x, denoised = yield step(x, sigma, mid, denoised, 1.0), asked
        x = step(x, mid, sigma_next, denoised, c_n)
    return x
