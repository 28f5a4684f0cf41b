"""The two kinds of model `FewstepScheduler` drives, as the pipeline sees them: where a pipeline's
`sample` lies for a sigma, which timestep the network gets, and how its output becomes `D`
(docs/conventions.md §2 and §5). The samplers themselves only see sigma space.

`VPTable`: a discrete VP noise table; the pipeline's sample is `x_vp = x / sqrt(1 + sigma^2)`.
`FlowTime`: a rectified flow / flow matching model (diffusers' FlowMatchEulerDiscreteScheduler,
its shifts included); the pipeline's sample is `x_t = x / (1 + sigma)` at `t = sigma / (1 + sigma)`, the
network sees `t * num_train_timesteps` and predicts the velocity `v`, so `D = x_t - t v`.
"""
from __future__ import annotations

import numpy as np
import torch

from ..samplers.flow_shift import FlowShift
from ..samplers.spaces import (FLOW_SIGMA_MAX, FLOW_TIME, SIGMA_TIME, flow_output_to_denoised, flow_sigma, flow_t,
                               sigma_of_timestep, sigmas_from_alphas_cumprod,
                               vp_output_to_denoised)


class VPTable:
    """`sigma_t = sqrt((1 - abar_t) / abar_t)` on the table `alphas_cumprod`, t = 0 .. T-1; steps in sigma."""

    step_time = SIGMA_TIME

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.alphas_cumprod = alphas_cumprod.double()
        self.log_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod).log()
        self.sigma_min, self.sigma_max = float(self.log_sigmas[0].exp()), float(self.log_sigmas[-1].exp())
        self.log_table = self.log_sigmas.numpy()  # numpy, for the plans (`timestep`, `plans.KarrasPlan`)
        self.index = np.arange(len(self.log_table), dtype=np.float64)

    def timestep(self, sigma: np.ndarray) -> np.ndarray:
        """The fractional timestep of each sigma (float64): `spaces.fractional_timestep`'s linear interpolation
        of `log sigma` over the table, clamped to its ends, in numpy (a plan's few sigmas: no torch overhead)."""
        return np.interp(np.log(np.maximum(sigma, 1e-30)), self.log_table, self.index)

    def sigma(self, timesteps: torch.Tensor) -> torch.Tensor:
        """`sigma(t)` by log-sigma interpolation (the inverse of `timestep`)."""
        return sigma_of_timestep(timesteps.double(), self.log_sigmas)

    def custom_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The sigmas of a pipeline's own timesteps, interpolated linearly in sigma as diffusers' `np.interp`."""
        table = self.log_sigmas.exp().numpy()
        return torch.from_numpy(np.interp(timesteps.numpy(), np.arange(len(table)), table))

    @staticmethod
    def scale(sigma: float) -> float:
        """x = sample * scale: `sqrt(1 + sigma^2)`."""
        return (1 + sigma ** 2) ** 0.5

    @staticmethod
    def denoised(out, x, sigma, prediction_type: str) -> torch.Tensor:
        return vp_output_to_denoised(out, x, sigma, prediction_type)


# The samplers whose flow plan (flow_uniform) is FlowMatchEuler/HeunDiscreteScheduler's, ending close to t = 0:
# the one-step and the two-call ones; the multistep ones' is DPMSolverMultistepScheduler's and UniPC's with
# `use_flow_sigmas` (FlowTime.sigma_min_of_plan), whose last step from t about 1/n to 0 suits their history.
FLOW_MATCH_PLANNED = ("euler", "ddim", "heun", "dpm_2", "amed")


class FlowTime:
    """`sigma = t / (1 - t)`, timestep `t * num_train_timesteps`, steps in t (`FLOW_TIME`); sigmas from
    FlowMatchEulerDiscreteScheduler's `sigma_min` (t = 1 / num_train_timesteps, statically shifted) to
    t = 1 (`FLOW_SIGMA_MAX`); `shift`: the plan's time shift (`samplers.flow_shift.FlowShift`)."""

    step_time = FLOW_TIME

    def __init__(self, num_train_timesteps: int, shift: FlowShift):
        self.n, self.shift = num_train_timesteps, shift
        self.sigma_min = float(flow_sigma(self._lowest()))
        self.sigma_max = FLOW_SIGMA_MAX

    def _lowest(self) -> torch.Tensor:
        t = torch.tensor(1 / self.n, dtype=torch.float64)
        return t if self.shift.dynamic else self.shift.static(t)

    def sigma_min_of_plan(self, steps: int, sampler: str) -> float:
        """The lower end, before the shift, of the flow_uniform plan of `steps` steps that the scheduler
        `sampler` mirrors uses: FlowMatchEuler's `sigma_min` (FLOW_MATCH_PLANNED), or, as DPM-Solver's
        `linspace(1, 1 / T, steps + 1)[:-1]`, its last point `1 - (steps - 1) / steps (1 - 1 / T)`, after
        which the plan's last step goes to 0."""
        if sampler in FLOW_MATCH_PLANNED or steps == 1:  # one step: from t = 1 to 0 in both
            return self.sigma_min
        return float(flow_sigma(torch.tensor(1 - (steps - 1) / steps * (1 - 1 / self.n), dtype=torch.float64)))

    def timestep(self, sigma: np.ndarray) -> np.ndarray:
        return flow_t(sigma) * self.n

    def sigma(self, timesteps: torch.Tensor) -> torch.Tensor:
        return flow_sigma((timesteps.double() / self.n).clamp(0, 1))

    def custom_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.sigma(timesteps)

    @staticmethod
    def scale(sigma: float) -> float:
        """x = sample * scale: `1 + sigma` (= 1 / (1 - t))."""
        return 1 + sigma

    @staticmethod
    def denoised(out, x, sigma, prediction_type: str) -> torch.Tensor:
        """`D = x_t - t v` (`spaces.flow_output_to_denoised`)."""
        return flow_output_to_denoised(out, x, sigma)
