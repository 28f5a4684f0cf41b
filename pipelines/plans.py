"""The sigma grids `FewstepScheduler.set_timesteps` plans, from its config (docs/conventions.md §5): a
pipeline's own `sigmas` or `timesteps`, the discrete timesteps of the mirrored diffusers scheduler, or a
computed schedule; on a flow, the times shifted as FlowMatchEulerDiscreteScheduler shifts them."""
from __future__ import annotations

import numpy as np
import torch

from ..samplers.schedules import DISCRETE_MIRRORS, discrete_grid, get_sigmas, ramp
from ..samplers.solvers import check_sigmas
from ..samplers.spaces import sigmas_from_alphas_cumprod
from . import conventions
from .timesteps import FlowTime

FLOW = "flow_prediction"  # diffusers' name (DPMSolverMultistepScheduler, UniPC) for a velocity-predicting flow


def check_mu(space, prediction_type: str, mu) -> None:
    """`mu` exactly when a flow's shift is dynamic; never on a VP model."""
    if isinstance(space, FlowTime):
        space.shift.check_mu(mu)
    elif mu is not None:
        raise ValueError(f"mu={mu} is the dynamic shift of a flow-matching model; this is a VP model "
                         f"(prediction_type={prediction_type!r})")


def custom_grid(space, num_train_timesteps: int, kind: str, values: tuple, mu=None) -> tuple[torch.Tensor, dict]:
    """The grid of a pipeline's own `sigmas` (as given; a flow's times shifted) or `timesteps` (their
    sigmas, then 0), and `{sigma: timestep}` for the given timesteps."""
    if len(values) < (2 if kind == "sigmas" else 1):
        raise ValueError(f"set_timesteps got {kind}={list(values)}: too few for one step")
    flow = isinstance(space, FlowTime)
    if kind == "sigmas" and not flow:  # a last step of length 0 (Euler's own sigmas ending at t = 0) is taken
        grid = torch.tensor(values, dtype=torch.float64)
        last = 1 if len(grid) > 2 and grid[-1] == grid[-2] > 0 else 0
        return torch.cat([check_sigmas(grid[:len(grid) - last]), grid[len(grid) - last:]]), {}
    steps = torch.tensor(values, dtype=torch.float64)
    if kind == "sigmas":  # a flow pipeline's sigmas are its times t in (0, 1], the 0 at the end added
        if not ((steps > 0) & (steps <= 1)).all():
            raise ValueError(f"set_timesteps got sigmas={list(values)}: a flow's sigmas are its times t, in (0, 1]")
        steps = space.shift.times(steps, mu) * num_train_timesteps
    last = num_train_timesteps - (0 if flow else 1)
    if not ((steps >= 0) & (steps <= last)).all() or not (steps[1:] < steps[:-1]).all():
        raise ValueError(f"set_timesteps got {kind}={list(values)}: they must decrease strictly "
                         f"within 0..{last if kind == 'timesteps' else 1}")
    if kind == "sigmas":
        values = tuple(steps.tolist())
    sigmas = space.custom_timesteps(steps)
    grid = check_sigmas(torch.cat([sigmas, sigmas.new_zeros(1)]))
    return grid, dict(zip(sigmas.tolist(), values))


def schedule_grid(c, schedule: str, space, steps: int, alphas_cumprod, mu=None) -> tuple[torch.Tensor, dict]:
    """The grid of `steps` steps of the config `c`'s schedule, and `{sigma: timestep}` for the discrete
    schedule, whose timesteps are the mirrored diffusers scheduler's (empty otherwise); a flow's own grid
    (flow_uniform) planned as the mirrored flow scheduler plans it (`FlowTime.sigma_min_of_plan`) and
    shifted as FlowMatchEulerDiscreteScheduler shifts it."""
    if schedule == "discrete":
        ddim = DISCRETE_MIRRORS.get(c.sampler) == "DDIMScheduler"  # none: discrete_grid names the mirrors
        spacing = c.timestep_spacing or conventions.mirror_default(c.sampler, "timestep_spacing")
        grid, timesteps = discrete_grid(steps, alphas_cumprod, spacing, c.steps_offset, c.sampler)
        if (not c.set_alpha_to_one) if ddim else c.final_sigmas_type == "sigma_min":
            # the last step lands on sigma(0); from t = 0 it is a step of length 0, as diffusers takes it
            grid[-1] = sigmas_from_alphas_cumprod(alphas_cumprod[:1])[0]
        return grid, dict(zip(grid.tolist(), timesteps.tolist()))
    flow_plan = schedule == "flow_uniform" and isinstance(space, FlowTime)
    lowest = space.sigma_min if c.sigma_min is None else c.sigma_min
    if flow_plan and c.sigma_min is None:
        lowest = space.sigma_min_of_plan(steps, c.sampler)
    grid = get_sigmas(schedule, steps, lowest, space.sigma_max if c.sigma_max is None else c.sigma_max, rho=c.rho,
                      eps_s=c.eps_s, final_sigmas_type=c.final_sigmas_type)
    return (space.shift.sigmas(grid, mu) if flow_plan else grid), {}


class KarrasPlan:
    """The Karras grid of `n` steps on a VP table and the fractional timesteps of its first `n` sigmas (a
    one-call sampler's evaluations), in one numpy pass: exactly `get_sigmas("karras", ...)` then
    `VPTable.timestep`, with what does not depend on `n` (the range's rho-th roots, the table's log
    sigmas) computed once. `final_sigmas_type`: the grid ends at 0 or at sigma_min (`get_sigmas`)."""

    def __init__(self, space, lowest: float, highest: float, rho: float, final_sigmas_type: str):
        self.lo, self.hi, self.rho = lowest ** (1 / rho), highest ** (1 / rho), rho
        self.extra = int(final_sigmas_type == "sigma_min")  # a last Karras point in place of the 0
        self.log_table, self.index = space.log_table, space.index

    def __call__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(grid, timesteps)`: `n + 1` float64 sigmas and `n` float32 timesteps (in place where numpy allows:
        the same operations in the same order as `schedules.karras`, so the same values)."""
        grid, points = np.zeros(n + 1), ramp(n + self.extra)
        points *= self.lo - self.hi
        points += self.hi
        np.power(points, self.rho, out=grid[:n + self.extra])
        log_sigmas = np.log(grid[:n], out=points[:n])
        timesteps = np.interp(log_sigmas, self.log_table, self.index).astype(np.float32)
        return torch.from_numpy(grid), torch.from_numpy(timesteps)


def karras_plan(space, sigma_min: float | None, sigma_max: float | None, rho: float,
                final_sigmas_type: str) -> KarrasPlan | None:
    """The `KarrasPlan` of a config's range (None: the table's own end), or None for a range `get_sigmas`
    refuses, which it then does at `set_timesteps`."""
    lowest = space.sigma_min if sigma_min is None else float(sigma_min)
    highest = space.sigma_max if sigma_max is None else float(sigma_max)
    return KarrasPlan(space, lowest, highest, rho, final_sigmas_type) if 1e-30 < lowest < highest else None
