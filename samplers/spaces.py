"""The two model spaces in sigma space (docs/conventions.md §2), written once for the denoisers and the
diffusers scheduler.

A discrete VP noise table: sigma from `alphas_cumprod`, fractional timesteps and back, a VP network's
output turned into the denoised `D`. A rectified flow `x_t = (1 - t) x0 + t eps`: `sigma = t / (1 - t)`,
`x_t = x / (1 + sigma)`, `D = x_t - t v`; the time each space's steps are taken in (`StepTime`);
and which configs are flow matching's."""
from __future__ import annotations

import torch


def sigmas_from_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    """`sigma_t = sqrt((1 - abar_t) / abar_t)`, increasing with `t`, in float64."""
    abar = torch.as_tensor(alphas_cumprod).double().cpu()
    return ((1 - abar) / abar).sqrt()


def fractional_timestep(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """The fractional timestep of `sigma` on a VP table with increasing `log_sigmas` (`log sigma_t`,
    t = 0, 1, ...): linear interpolation of `log sigma` between its neighbours, clamped to the
    table's ends; float64."""
    log_sigmas = log_sigmas.to(sigma.device, torch.float64)
    log_sigma = sigma.double().clamp(min=1e-30).log().clamp(log_sigmas[0], log_sigmas[-1])
    hi = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
    lo_val, hi_val = log_sigmas[hi - 1], log_sigmas[hi]
    frac = (log_sigma - lo_val) / (hi_val - lo_val)
    return (hi - 1).double() + frac


def sigma_of_timestep(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """The inverse of `fractional_timestep`: `sigma(t)` by linear interpolation of `log sigma`."""
    t = t.clamp(0, len(log_sigmas) - 1)
    lo = t.floor().long().clamp(max=len(log_sigmas) - 2)
    frac = t - lo
    return torch.exp(log_sigmas[lo] * (1 - frac) + log_sigmas[lo + 1] * frac)


def vp_output_to_denoised(out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """`D` from a VP network's output `out` at `x_vp = x / sqrt(1 + sigma^2)` (`x` in sigma space,
    `sigma` broadcastable to it): `x - sigma eps` (epsilon), `sqrt(abar) x_vp - sqrt(1 - abar) v`
    with `abar = 1 / (1 + sigma^2)` (v_prediction), or `out` itself (sample). A learned-variance
    output (twice the channels of `x`) is cut to its first half."""
    out = out.to(x.dtype)
    if out.shape[1] == 2 * x.shape[1]:
        out = out[:, : x.shape[1]]
    if prediction_type == "epsilon":
        return x - sigma * out
    if prediction_type == "sample":
        return out
    abar = 1 / (1 + sigma ** 2)
    return abar * x - (1 - abar).sqrt() * out  # sqrt(abar) x_vp = abar x


# The noise end of a flow, t = 1, has an infinite sigma; it is planned at t = 1 - 1e-8, whose float32
# timestep is num_train_timesteps itself and whose sigma-space point x = x_t * 1e8 float64 holds exactly.
FLOW_SIGMA_MAX = 1e8


def flow_t(sigma: torch.Tensor) -> torch.Tensor:
    """A flow's time of `sigma`: `t = sigma / (1 + sigma)`."""
    return sigma / (1 + sigma)


def flow_sigma(t: torch.Tensor) -> torch.Tensor:
    """The inverse of `flow_t`, `sigma = t / (1 - t)`, with t = 1 at `FLOW_SIGMA_MAX`."""
    return torch.where(t < 1, t / (1 - t).clamp(min=1 / FLOW_SIGMA_MAX), torch.full_like(t, FLOW_SIGMA_MAX))


def flow_output_to_denoised(v: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """`D = x_t - t v` with `x_t = x / (1 + sigma)`, `t = sigma / (1 + sigma)` (`sigma` broadcastable to `x`)."""
    return (x - sigma * v.to(x.dtype)) / (1 + sigma)


class StepTime:
    """The variable a step generator integrates in: EDM's general form `y = s(sigma) x` (Karras et al.
    2022, eq. 4) with the time `tau = s(sigma) sigma`. For both spaces here `dy/dtau = (y - D) / tau`
    (it needs `s^2 = s + sigma ds/dsigma`). `SIGMA_TIME`: s = 1, tau = sigma, EDM's own (VE and VP
    models). `FLOW_TIME`: s = 1 / (1 + sigma), so `y = x_t` and `tau = t`, and the slope is the
    velocity: t = 1 is an ordinary start, and Heun in t is FlowMatchHeunDiscreteScheduler's."""

    def __init__(self, name: str, flow: bool):
        self.name, self.flow = name, flow

    def tau(self, sigma):
        return flow_t(sigma) if self.flow else sigma

    def between(self, sigma, sigma_next, r):
        """A step's intermediate point as a sigma (AMED's `s_n`, DPM-Solver-2's midpoint at r = 1/2): in sigma
        time geometric, `sigma_next^r sigma^(1-r)`; in a flow's t arithmetic, `t + r (t_next - t)` (the
        geometric mean of t is pulled towards 0 on a step that ends near it)."""
        if self.flow:
            t = flow_t(sigma)
            return flow_sigma(t + r * (flow_t(sigma_next) - t))
        return sigma_next ** r * sigma ** (1 - r)

    def to_model(self, x, sigma):
        """`y = s(sigma) x`."""
        return x / (1 + sigma) if self.flow else x

    def to_sigma(self, y, sigma):
        """`x = y / s(sigma)`."""
        return y * (1 + sigma) if self.flow else y

    def __repr__(self) -> str:
        return self.name


SIGMA_TIME, FLOW_TIME = StepTime("SIGMA_TIME", flow=False), StepTime("FLOW_TIME", flow=True)


def is_flow_matching(scheduler_config: dict) -> bool:
    """A flow-matching scheduler's config (FlowMatchEuler/HeunDiscreteScheduler): by its class name (a saved
    config) or its keys (`.config`: a shift and no noise table)."""
    keys = set(scheduler_config)
    return (str(scheduler_config.get("_class_name", "")).startswith("FlowMatch")
            or ("shift" in keys and not keys & {"beta_schedule", "trained_betas"}))
