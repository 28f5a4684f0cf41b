"""Noise schedules: grids of `n` sampler steps, `n` decreasing sigmas with a final 0 appended, or
(`final_sigmas_type="sigma_min"`) `n + 1` sigmas ending at sigma_min, as diffusers' `final_sigmas_type`.

All in the EDM sigma space `x = x0 + sigma * eps` (docs/conventions.md §3). Results are float64.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .spaces import sigmas_from_alphas_cumprod


ZERO = np.zeros(1)


def _append_zero(sigmas: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.concatenate((sigmas, ZERO)))


def ramp(n: int) -> np.ndarray:
    """`np.linspace(0, 1, n)` as numpy computes it (`arange(n) * (1 / (n - 1))`, the last point 1), without
    linspace's Python-level overhead, which costs more than the rest of a plan."""
    if n == 1:
        return np.zeros(1)
    points = np.arange(n, dtype=np.float64) * (1 / (n - 1))
    points[-1] = 1.0
    return points


def _check_range(n: int, sigma_min: float, sigma_max: float) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"the number of steps must be a whole number of at least 1, got {n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def karras(n: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: `(smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho`."""
    _check_range(n, sigma_min, sigma_max)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp(n) * (lo - hi)) ** rho)


def logsnr(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in `log sigma` (= uniform in log-SNR)."""
    _check_range(n, sigma_min, sigma_max)
    return _append_zero(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def time_uniform(n: int, sigma_min: float, sigma_max: float, eps_s: float) -> torch.Tensor:
    """Uniform in the continuous VP time `t in [1, eps_s]` (Song et al. 2021), with
    `sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)` and `beta_d`, `beta_min` chosen so that
    `sigma(1) = sigma_max`, `sigma(eps_s) = sigma_min` (as EDM's "vp" discretisation)."""
    _check_range(n, sigma_min, sigma_max)
    log_hi, log_lo = math.log1p(sigma_max ** 2), math.log1p(sigma_min ** 2)
    beta_d = 2 * (log_lo / eps_s - log_hi) / (eps_s - 1)
    beta_min = log_hi - beta_d / 2
    t = np.linspace(1.0, eps_s, n)
    return _append_zero(np.sqrt(np.expm1(beta_d * t ** 2 / 2 + beta_min * t)))


def flow_uniform(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in a rectified flow's time `t = sigma / (1 + sigma)` (docs/conventions.md §2), from
    `t(sigma_max)` to `t(sigma_min)`: `sigma = t / (1 - t)`, the grid of diffusers'
    FlowMatchEulerDiscreteScheduler (unshifted) in sigma space."""
    _check_range(n, sigma_min, sigma_max)
    t = np.linspace(sigma_max / (1 + sigma_max), sigma_min / (1 + sigma_min), n)
    return _append_zero(t / (1 - t))


# The diffusers scheduler whose discrete timesteps each sampler mirrors (dopri5 uses only the ends).
DISCRETE_MIRRORS = {"ddim": "DDIMScheduler", "ipndm": "DDIMScheduler", "dopri5": "DDIMScheduler",
                    "dpmpp_2m": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler",
                    "heun": "HeunDiscreteScheduler"}
FINAL_SIGMAS = ("zero", "sigma_min")


def _spaced(n: int, T: int, spacing: str, steps_offset: int, fractional: bool) -> np.ndarray:
    """diffusers' `timestep_spacing` for `n` points, largest first: leading
    `round(i * (T // n)) + steps_offset`, trailing `round(T - i T / n) - 1`, linspace
    `linspace(0, T - 1, n)` (rounded unless `fractional`, then float32 as Euler's)."""
    if spacing == "leading":
        return (np.arange(n) * (T // n)).round()[::-1] + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)) - 1
    if spacing == "linspace":
        steps = np.linspace(0, T - 1, n, dtype=np.float32 if fractional else None)[::-1]
        return steps if fractional else steps.round()
    raise ValueError(f"unknown spacing {spacing!r}: use leading, trailing or linspace")


def discrete_timesteps(n: int, num_train_timesteps: int, spacing: str = "leading", steps_offset: int = 0,
                       mirror: str = "ddim") -> np.ndarray:
    """The timesteps (largest first) that the diffusers scheduler `DISCRETE_MIRRORS[mirror]` picks
    for `n` inference steps with `timestep_spacing` "leading" (+ `steps_offset`), "trailing" or
    "linspace": DDIMScheduler (ddim, ipndm) `_spaced(n)`, integers; DPMSolverMultistepScheduler
    (dpmpp_2m) `_spaced(n + 1)` without its last point for leading and linspace, integers;
    EulerDiscreteScheduler (euler) and HeunDiscreteScheduler (heun) `_spaced(n)` as float32,
    fractional for linspace (749.25). Heun's own list repeats each but the first (the sampler does)."""
    T = num_train_timesteps
    if int(n) != n or not 1 <= n <= T:
        raise ValueError(f"the number of steps must be a whole number from 1 to {T}, got {n}")
    if mirror not in DISCRETE_MIRRORS:
        raise ValueError(f"the discrete schedule plans the timesteps of the diffusers scheduler a sampler mirrors, "
                         f"and {mirror!r} mirrors none: use it with another schedule, or one of "
                         f"{', '.join(DISCRETE_MIRRORS)}")
    scheduler = DISCRETE_MIRRORS[mirror]
    fractional = scheduler in ("EulerDiscreteScheduler", "HeunDiscreteScheduler")
    if scheduler == "DPMSolverMultistepScheduler" and spacing != "trailing":
        steps = _spaced(n + 1, T, spacing, 0, False)[:-1] + (steps_offset if spacing == "leading" else 0)
    else:
        steps = _spaced(n, T, spacing, steps_offset, fractional)
    steps = steps.astype(np.float32 if fractional else np.int64)
    if len(steps) != n or (np.diff(steps) >= 0).any() or steps.min() < 0 or steps.max() > T - 1:
        shown = steps.tolist() if len(steps) <= 8 else [*steps[:3].tolist(), "...", *steps[-3:].tolist()]
        raise ValueError(f"{scheduler} cannot take {n} steps with {spacing} spacing and steps_offset {steps_offset}: "
                         f"its {len(steps)} timesteps {shown} are not {n} distinct ones in 0..{T - 1}")
    return steps


def discrete_grid(n: int, alphas_cumprod, spacing: str = "leading", steps_offset: int = 0, mirror: str = "ddim",
                  final_sigmas_type: str = "zero") -> tuple[torch.Tensor, np.ndarray]:
    """The sigmas of a discrete VP model at the `n` timesteps `discrete_timesteps(..., mirror)`,
    then the final sigma (`n + 1` in all), and those timesteps. `sigma(t)` is the table `sqrt((1 - abar_t) / abar_t)`
    interpolated linearly in sigma at a fractional `t` (diffusers' `np.interp`). final_sigmas_type:
    "zero" (DDIM's `set_alpha_to_one=True`) or "sigma_min", the table's `sigma(0)`
    (DDIM's `set_alpha_to_one=False`, DPM-Solver's and Euler's `final_sigmas_type`)."""
    if final_sigmas_type not in FINAL_SIGMAS:
        raise ValueError(f"unknown final_sigmas_type {final_sigmas_type!r}: use zero or sigma_min")
    table = sigmas_from_alphas_cumprod(alphas_cumprod).numpy()
    steps = discrete_timesteps(n, len(table), spacing, steps_offset, mirror)
    sigmas = np.interp(steps.astype(np.float64), np.arange(len(table)), table)
    final = 0.0 if final_sigmas_type == "zero" else table[0]
    if final >= sigmas[-1]:
        raise ValueError(f"final_sigmas_type sigma_min ends at sigma(0) = {final:.6g}, which the last timestep "
                         f"{steps[-1]} already has: use leading spacing with steps_offset 1, or final_sigmas_type zero "
                         f"(DDIM's set_alpha_to_one=True)")
    return torch.from_numpy(np.append(sigmas, final)), steps


RHO = 7.0     # Karras' rho: the default of every grid (get_sigmas, FewstepScheduler, the command line)
EPS_S = 1e-3  # the VP-time floor of time_uniform
SCHEDULES = {"karras": karras, "logsnr": logsnr, "time_uniform": time_uniform, "flow_uniform": flow_uniform}


def get_sigmas(kind: str, n: int, sigma_min: float | None = None, sigma_max: float | None = None,
               rho: float = RHO, alphas_cumprod=None, spacing: str = "leading", steps_offset: int = 0,
               eps_s: float = EPS_S, device=None, mirror: str = "ddim", final_sigmas_type: str = "zero") -> torch.Tensor:
    """The grid of `n` sampler steps, float64 on `device`: `n + 1` decreasing sigmas.

    kind: "karras" (uses `rho`), "logsnr", "time_uniform" (uses `eps_s`), "flow_uniform" (uniform in
        a flow's `t`) over
        [sigma_min, sigma_max]; or "discrete": a VP model's own table `alphas_cumprod` at the
        timesteps diffusers picks with `spacing` ("leading", "trailing", "linspace") and
        `steps_offset`, as the scheduler the sampler `mirror` mirrors does (`discrete_timesteps`).
    final_sigmas_type: how the grid ends. "zero": `n` points from sigma_max to sigma_min, then a
        last step to 0 (the sampler's final step returns its denoised value); "sigma_min": `n + 1`
        points from sigma_max to sigma_min, the sample returned at sigma_min (one network call less
        for samplers that evaluate at the end of a step; discrete: the table's sigma(0)).
    """
    if final_sigmas_type not in FINAL_SIGMAS:
        raise ValueError(f"unknown final_sigmas_type {final_sigmas_type!r}: use zero or sigma_min")
    if kind == "discrete":
        if alphas_cumprod is None:
            raise ValueError("the discrete schedule needs the model's alphas_cumprod (a VP model's noise table)")
        sigmas = discrete_grid(n, alphas_cumprod, spacing, steps_offset, mirror, final_sigmas_type)[0]
    elif kind in SCHEDULES:
        if sigma_min is None or sigma_max is None:
            raise ValueError(f"the {kind} schedule needs sigma_min and sigma_max")
        extra = {"karras": {"rho": rho}, "time_uniform": {"eps_s": eps_s}}.get(kind, {})
        if final_sigmas_type == "zero":
            sigmas = SCHEDULES[kind](n, float(sigma_min), float(sigma_max), **extra)
        else:
            _check_range(n, float(sigma_min), float(sigma_max))
            sigmas = SCHEDULES[kind](n + 1, float(sigma_min), float(sigma_max), **extra)[:-1]
    else:
        raise ValueError(f"unknown schedule {kind!r}: use one of {', '.join([*SCHEDULES, 'discrete'])}")
    return sigmas if device is None else sigmas.to(device)
