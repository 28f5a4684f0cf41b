"""Every sampler on a shifted flow (`flow-accuracy`): FewstepScheduler against diffusers' flow-matching
schedulers at equal model calls, on a flow whose velocity is exact and smooth but nonlinear, that of a
2-D Gaussian mixture with wide components (`x_t = (1 - t) x0 + t eps`, `v = (x_t - D) / t`, `D` the mixture's
exact denoiser at `sigma = t / (1 - t)`), planned with SD3's static shift. The measure is the mean distance
to the exact ODE solution from the same noise (dopri5, rtol = atol = 1e-9)."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler,
                       UniPCMultistepScheduler)

from fewstep import samplers
from fewstep.evaluation.report import nfe_plot, nfe_table
from fewstep.pipelines import FewstepScheduler
from fewstep.samplers.noise import seeded_noise
from fewstep.samplers.spaces import FLOW_SIGMA_MAX, FLOW_TIME
from fewstep.suites.sweep import output_dir, write_suite

FLOW_SAMPLERS = ("euler", "heun", "dpm_2", "dpmpp_2m", "ipndm", "amed_plugin")
CALLS = (3, 5, 7, 11)


class MixtureFlow:
    """The flow of a smooth 2-D mixture as a denoiser in sigma space (stepping in t) and as a pipeline's
    velocity model `(x_t, timestep)`."""

    step_time, sample_shape = FLOW_TIME, (2,)
    sigma_min, sigma_max = 1e-3, FLOW_SIGMA_MAX

    def __init__(self):
        self.mixture = samplers.GMMDenoiser(means=[[-2.0, 0.5], [1.5, 1.0], [0.0, -2.0]], stds=[0.6, 0.8, 0.7])

    def __call__(self, x, sigma):
        return self.mixture(x, sigma)

    def velocity(self, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = (timestep.double() / 1000).reshape(-1, 1)
        denoised = self.mixture(x_t.double() / (1 - t).clamp(min=1e-12), (t / (1 - t).clamp(min=1e-12)).reshape(-1))
        return ((x_t.double() - torch.where(t < 1, denoised, 0.0)) / t).to(x_t.dtype)


def schedulers(shift: float) -> dict:
    """`{label: (scheduler, its steps for a number of calls)}`: diffusers' own and FewstepScheduler's samplers."""
    flow = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": shift}
    own = {"diffusers FlowMatchEuler": (FlowMatchEulerDiscreteScheduler(shift=shift), lambda calls: calls),
           "diffusers FlowMatchHeun": (FlowMatchHeunDiscreteScheduler(shift=shift), lambda calls: (calls + 1) // 2),
           "diffusers DPMSolverMultistep": (DPMSolverMultistepScheduler(**flow), lambda calls: calls),
           "diffusers UniPCMultistep": (UniPCMultistepScheduler(**flow), lambda calls: calls)}
    config = FlowMatchEulerDiscreteScheduler(shift=shift).config
    ours = {name: (FewstepScheduler.from_config(config, sampler=name),
                   lambda calls, name=name: samplers.steps_for_nfe(name, calls)) for name in FLOW_SAMPLERS}
    return {**own, **ours}


def run(scheduler, model, noise: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    """A pipeline's loop: the final sample and the model calls made."""
    scheduler.set_timesteps(steps)
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(len(x))), t, x).prev_sample
    return x, len(scheduler.timesteps)


def flow_accuracy(out_dir, *, nfe=CALLS, num_samples: int = 2000, seed: int = 100_000, shift: float = 3.0
                  ) -> list[Path]:
    """Write `flow-accuracy.md`, `.json` and `flow_accuracy.png` into `out_dir`; return their paths."""
    out_dir, flow = output_dir(out_dir), MixtureFlow()
    noise = seeded_noise(range(seed, seed + num_samples), flow.sample_shape)
    exact = samplers.sample("dopri5", flow, noise, torch.tensor([FLOW_SIGMA_MAX, 1e-6, 0.0]), rtol=1e-9, atol=1e-9)
    results = []
    for label, (scheduler, steps_of) in schedulers(shift).items():
        for calls in nfe:
            x, made = run(scheduler, flow.velocity, noise.double(), steps_of(calls))
            results.append({"label": label, "target_nfe": calls, "nfe": made,
                            "ode_error": (x - exact).norm(dim=1).mean().item()})
    picture = nfe_plot(results, "ode_error", out_dir / "flow_accuracy.png", f"shifted flow (shift {shift:g})")
    body = (f"{num_samples} noises (seeds {seed}-{seed + num_samples - 1}) of the flow of a smooth 2-D mixture "
            f"(`suites/flow_accuracy.py`: means (-2, 0.5), (1.5, 1), (0, -2), standard deviations 0.6, 0.8, 0.7), "
            f"planned with a static shift of {shift:g} as Stable Diffusion 3's scheduler config, each scheduler on "
            f"its default plan for the number of model calls (FewstepScheduler: euler, heun, dpm_2 on "
            f"FlowMatchEuler's, the multistep samplers on DPM-Solver's). Mean distance to the exact ODE solution "
            f"from the same noise; a cell's NFE is the model calls.\n\n{nfe_table(results, 'ode_error', list(nfe))}"
            f"\n\n![ODE error](benchmarks/flow_accuracy.png)")
    return write_suite(out_dir, "flow-accuracy", "Every sampler on a shifted flow", body, results, [picture])
