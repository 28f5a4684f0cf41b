"""Noise schedules: `n` decreasing sigmas with a final 0 appended (so `n` sampler steps).

All in the EDM sigma space `x = x0 + sigma * eps` (DESIGN §3). Results are float64.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _append_zero(sigmas) -> torch.Tensor:
    sigmas = torch.as_tensor(np.asarray(sigmas, dtype=np.float64))
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check_range(n: int, sigma_min: float, sigma_max: float) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"the number of steps must be a whole number of at least 1, got {n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: `(smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho`."""
    _check_range(n, sigma_min, sigma_max)
    ramp = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def logsnr(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in `log sigma` (= uniform in log-SNR)."""
    _check_range(n, sigma_min, sigma_max)
    return _append_zero(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def time_uniform(n: int, sigma_min: float, sigma_max: float, eps_s: float = 1e-3) -> torch.Tensor:
    """Uniform in the continuous VP time `t in [1, eps_s]` (Song et al. 2021), with
    `sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)` and `beta_d`, `beta_min` chosen so that
    `sigma(1) = sigma_max`, `sigma(eps_s) = sigma_min` (as EDM's "vp" discretisation)."""
    _check_range(n, sigma_min, sigma_max)
    log_hi, log_lo = math.log1p(sigma_max ** 2), math.log1p(sigma_min ** 2)
    beta_d = 2 * (log_lo / eps_s - log_hi) / (eps_s - 1)
    beta_min = log_hi - beta_d / 2
    t = np.linspace(1.0, eps_s, n)
    return _append_zero(np.sqrt(np.expm1(beta_d * t ** 2 / 2 + beta_min * t)))


def discrete_timesteps(n: int, num_train_timesteps: int, spacing: str = "leading", steps_offset: int = 0) -> np.ndarray:
    """The integer timesteps diffusers' schedulers pick for `n` inference steps (largest first),
    for `timestep_spacing` "leading" (DDIM, DDPM), "trailing" or "linspace"."""
    T = num_train_timesteps
    if int(n) != n or not 1 <= n <= T:
        raise ValueError(f"the number of steps must be a whole number from 1 to {T}, got {n}")
    if spacing == "leading":
        steps = (np.arange(n) * (T // n)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        steps = np.round(np.arange(T, 0, -T / n)) - 1
    elif spacing == "linspace":
        steps = np.linspace(0, T - 1, n).round()[::-1]
    else:
        raise ValueError(f"unknown spacing {spacing!r}: use leading, trailing or linspace")
    return steps.astype(np.int64)


def sigmas_from_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    """`sigma_t = sqrt((1 - abar_t) / abar_t)`, increasing with `t`, in float64."""
    abar = torch.as_tensor(alphas_cumprod).double().cpu()
    return ((1 - abar) / abar).sqrt()


def discrete(n: int, alphas_cumprod, spacing: str = "leading", steps_offset: int = 0) -> torch.Tensor:
    """The sigmas of a discrete VP model at diffusers' timesteps, then 0 (DDIM's
    `set_alpha_to_one=True` final step)."""
    table = sigmas_from_alphas_cumprod(alphas_cumprod)
    steps = discrete_timesteps(n, len(table), spacing, steps_offset)
    return _append_zero(table[torch.from_numpy(steps)].numpy())


SCHEDULES = {"karras": karras, "logsnr": logsnr, "time_uniform": time_uniform}


def get_sigmas(kind: str, n: int, sigma_min: float | None = None, sigma_max: float | None = None,
               rho: float = 7.0, alphas_cumprod=None, spacing: str = "leading", steps_offset: int = 0,
               eps_s: float = 1e-3, device=None) -> torch.Tensor:
    """`n` decreasing sigmas and a final 0 (float64, on `device`).

    kind: "karras" (uses `rho`), "logsnr", "time_uniform" (uses `eps_s`) over
        [sigma_min, sigma_max]; or "discrete": a VP model's own table `alphas_cumprod` at the
        timesteps diffusers picks with `spacing` ("leading", "trailing", "linspace") and
        `steps_offset`.
    """
    if kind == "discrete":
        if alphas_cumprod is None:
            raise ValueError("the discrete schedule needs the model's alphas_cumprod (a VP model's noise table)")
        sigmas = discrete(n, alphas_cumprod, spacing, steps_offset)
    elif kind in SCHEDULES:
        if sigma_min is None or sigma_max is None:
            raise ValueError(f"the {kind} schedule needs sigma_min and sigma_max")
        extra = {"karras": {"rho": rho}, "time_uniform": {"eps_s": eps_s}}.get(kind, {})
        sigmas = SCHEDULES[kind](n, float(sigma_min), float(sigma_max), **extra)
    else:
        raise ValueError(f"unknown schedule {kind!r}: use one of {', '.join([*SCHEDULES, 'discrete'])}")
    return sigmas.to(device)
