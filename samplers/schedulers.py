"""`FewstepScheduler`: this package's samplers as a diffusers scheduler (docs/conventions.md §5).

    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, sampler="dpmpp_2m")

The pipeline stays in VP space: it starts from unit-variance noise (`init_noise_sigma = 1`,
`scale_model_input` is the identity) and feeds the UNet `x_vp = x / sqrt(1 + sigma^2)` at the
fractional timestep `t(sigma)`. Each `step()` turns the model output into `D(x, sigma)`
(`vp_output_to_denoised`), sends it to the sampler's step generator (`solvers.SOLVERS`, the one
implementation of each algorithm) and returns the next point the generator asks about,
`x_next / sqrt(1 + sigma_next^2)`, or the final sample at the grid's last sigma (0, or DDIM's
`sigma(t=0)` with `set_alpha_to_one=False`). The generator keeps its own
float64 state (`x = x_vp sqrt(1 + sigma^2)`, multistep history), so the scheduler follows its own
trajectory: it reads the pipeline's `sample` only at the first step.
"""
from __future__ import annotations

import math
import numbers

import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from .denoisers import DiffusersUNetDenoiser
from .schedules import DISCRETE_MIRRORS, discrete_grid, get_sigmas
from .vp import fractional_timestep, sigma_of_timestep, sigmas_from_alphas_cumprod, vp_output_to_denoised
from .solvers import FIXED_GRID_NAMES, SOLVERS, resolve_options, run_steps

NOISE_TABLE_KEYS = ("beta_schedule", "trained_betas")
# diffusers' schedulers on a VP noise table (beta_schedule, trained_betas), whose configs
# `from_config` takes; not EDM's or flow matching's, which have no table.
COMPATIBLES = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
               "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
               "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
               "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler"]


class FewstepScheduler(SchedulerMixin, ConfigMixin):
    """Any fixed-grid sampler of `samplers.solvers` on a discrete VP model, one `step()` per
    network evaluation.

    Noise table (as diffusers' schedulers): num_train_timesteps, beta_start, beta_end,
        beta_schedule, trained_betas; prediction_type: epsilon, v_prediction or sample.
    sampler: ddim, euler, heun, dpmpp_2m or ipndm; sampler_options: its keywords, e.g. {"eta": 1.0}.
    schedule: karras (rho), logsnr, time_uniform (eps_s) over [sigma_min, sigma_max] (None: the
        table's range), or discrete: exactly the timesteps and sigmas of the diffusers scheduler
        the sampler mirrors (`schedules.DISCRETE_MIRRORS`: DDIMScheduler for ddim and ipndm,
        DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler) for
        timestep_spacing and steps_offset, ending at 0, or for ddim and ipndm with
        `set_alpha_to_one=False` at the table's `sigma(0)` as DDIMScheduler does.
        `set_timesteps(n)` makes `n` sampler steps; `timesteps` lists one (fractional) timestep per
        network evaluation, so heun interleaves them and has `order` 2.
    A stochastic sampler (ddim with eta > 0) draws from the generator given to the first `step()`
    (or to `set_timesteps`) until the trajectory ends. `step(..., eta)` (as DDIMScheduler's, which
    pipelines pass) sets ddim's eta for the trajectory in place of `sampler_options["eta"]`; eta 0
    means "not given" (pipelines pass 0 by default), so `sampler_options` then decides.
    """

    _compatibles = COMPATIBLES
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str | None = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 rescale_betas_zero_snr: bool = False, timestep_spacing: str = "leading", steps_offset: int = 0,
                 set_alpha_to_one: bool = True,
                 sampler: str = "ddim", sampler_options: dict | None = None, schedule: str = "karras",
                 rho: float = 7.0, sigma_min: float | None = None, sigma_max: float | None = None,
                 eps_s: float = 1e-3):
        if sampler in SOLVERS and SOLVERS[sampler].adaptive:
            raise ValueError(f"sampler {sampler!r} is adaptive and cannot run one step() at a time; "
                             f"use one of {', '.join(FIXED_GRID_NAMES)}")
        if sampler not in FIXED_GRID_NAMES:
            raise ValueError(f"unknown sampler {sampler!r}: use one of {', '.join(FIXED_GRID_NAMES)}")
        self._options = resolve_options(sampler, sampler_options)
        if prediction_type not in DiffusersUNetDenoiser.PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}: "
                             f"use one of {', '.join(DiffusersUNetDenoiser.PREDICTION_TYPES)}")
        if beta_schedule is None and trained_betas is None:
            raise ValueError("the scheduler config has no noise table: beta_schedule and trained_betas are both None")
        if rescale_betas_zero_snr:
            raise ValueError("rescale_betas_zero_snr=True is not supported: its sigma_max is infinite")
        try:
            table = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                                  beta_schedule=beta_schedule, trained_betas=trained_betas)
        except NotImplementedError:
            raise ValueError(f"unsupported beta_schedule {beta_schedule!r}") from None
        self.alphas_cumprod = table.alphas_cumprod.double()
        self.log_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod).log()
        self.order = SOLVERS[sampler].nfe(1, False)  # evaluations per step: 2 for heun
        self.num_inference_steps = self.grid = self.sigmas = self.timesteps = self._plan_key = None
        self._step_index, self._set_generator = 0, None
        self._steps = self._request = self._generator = self._eta = None  # the running trajectory

    @property
    def _solver(self):
        """The registry entry of the configured sampler (looked up, not stored: schedulers pickle)."""
        return SOLVERS[self.config.sampler]

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As `ConfigMixin.from_config`, but a config without a VP noise table (a flow-matching or
        EDM scheduler's) is refused instead of silently getting the default betas."""
        if isinstance(config, dict) and not any(key in config or key in kwargs for key in NOISE_TABLE_KEYS):
            keys = ", ".join(sorted(k for k in config if not k.startswith("_")))
            raise ValueError(f"the scheduler config has no noise table (no beta_schedule or trained_betas): "
                             f"{config.get('_class_name', 'a config')} with keys {keys}")
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def _trajectory(self, x: torch.Tensor, grid: torch.Tensor, generator, options: dict):
        """The sampler's step generator down `grid`, starting at `x` (sigma space)."""
        extra = {"generator": generator} if self._solver.stochastic else {}
        return self._solver.run(x, grid, **options, **extra)

    def _with_eta(self, eta) -> dict:
        """`sampler_options`, with a nonzero `step()` eta in place of theirs (0 or None: theirs)."""
        if not eta:
            return self._options
        if "eta" not in self._solver.options:
            raise ValueError(f"sampler {self.config.sampler!r} has no eta, got eta={eta}; "
                             f"only ddim is stochastic (eta 0 or None is accepted)")
        return {**self._options, "eta": float(eta)}

    def set_timesteps(self, num_inference_steps: int, device=None, generator=None) -> None:
        """`num_inference_steps` sampler steps on the configured schedule: the sigma `grid` (then its
        final sigma, 0 but for DDIM's set_alpha_to_one=False), the sigmas the sampler evaluates, in
        order (`sigmas`, then that final sigma), and their timesteps
        `t(sigma)` (`timesteps`, float32 on `device`). A pipeline calls this once per generation, so
        the last plan is kept and reused for the same step count and device."""
        if not isinstance(num_inference_steps, numbers.Integral) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a whole number of at least 1 for sampler "
                             f"{self.config.sampler!r}, got {num_inference_steps}")
        key = (int(num_inference_steps), torch.device(device if device is not None else "cpu"))
        if key != self._plan_key:
            self.grid, self.sigmas, self.timesteps = self._plan(*key)
            self._plan_key = key
        self.num_inference_steps = key[0]
        self._step_index, self._set_generator = 0, generator

    def _grid(self, steps: int) -> tuple[torch.Tensor, dict]:
        """The sigma grid of the configured schedule, and `{sigma: timestep}` for the discrete
        schedule, whose timesteps are the mirrored diffusers scheduler's (empty otherwise)."""
        c = self.config
        if c.schedule == "discrete":
            ddim_final = not c.set_alpha_to_one and DISCRETE_MIRRORS[c.sampler] == "DDIMScheduler"
            grid, timesteps = discrete_grid(steps, self.alphas_cumprod, c.timestep_spacing, c.steps_offset,
                                            c.sampler, "sigma_min" if ddim_final else "zero")
            return grid, dict(zip(grid.tolist(), timesteps.tolist()))
        table = self.log_sigmas.exp()
        grid = get_sigmas(c.schedule, steps, float(table[0]) if c.sigma_min is None else c.sigma_min,
                          float(table[-1]) if c.sigma_max is None else c.sigma_max, rho=c.rho, eps_s=c.eps_s)
        return grid, {}

    def _plan(self, steps: int, device: torch.device):
        """The grid does not depend on `x`, so one dry run of the step generator on a one-element
        `x` (with a throwaway generator: no random state is consumed) lists the sigmas it evaluates;
        each one's timestep is the schedule's own (discrete) or `fractional_timestep(sigma)`."""
        grid, timestep_of = self._grid(steps)
        evaluated = []

        def record(x, sigma):
            evaluated.append(float(sigma))
            return x

        run_steps(self._trajectory(torch.zeros(1, dtype=torch.float64), grid, torch.Generator(), self._options), record)
        sigmas = torch.tensor([*evaluated, float(grid[-1])], dtype=torch.float64)
        fractional = fractional_timestep(sigmas[:-1], self.log_sigmas).tolist()
        timesteps = [timestep_of.get(sigma, t) for sigma, t in zip(evaluated, fractional)]
        return grid, sigmas, torch.tensor(timesteps, dtype=torch.float64).float().to(device)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The identity: the pipeline's sample is already the UNet input `x_vp`."""
        return sample

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise=None,
             return_dict: bool = True, **pipeline_kwargs):
        """Answer the sampler's pending request `(x, sigma)` with
        `D = vp_output_to_denoised(model_output, x, sigma)` and return the next request's
        `x_vp = x_next / sqrt(1 + sigma_next^2)` (the final sample after the last evaluation).

        The signature is DDIMScheduler's, so pipelines that look for `eta` pass it. The first step
        starts the trajectory at `x = sample sqrt(1 + sigma_0^2)`, binds `generator` (else the one
        given to `set_timesteps`) and `eta`: a nonzero eta replaces `sampler_options["eta"]` for
        the trajectory (ddim only; another sampler refuses it), 0 or None leaves sampler_options'
        (pipelines pass eta=0 by default); a different nonzero eta later is refused.
        use_clipped_model_output is ignored (nothing is clipped); variance_noise is refused (the
        sampler draws its own noise). `timestep` is checked at the first step only; the trajectory
        knows where it is."""
        if pipeline_kwargs:
            raise ValueError(f"step() takes no sampler keywords, got {pipeline_kwargs}; set them in sampler_options")
        if variance_noise is not None:
            raise ValueError("step() takes no variance_noise: the sampler draws its own noise from generator")
        if self.timesteps is None or self._step_index == len(self.timesteps):
            raise ValueError("call set_timesteps(num_inference_steps) before stepping a new trajectory")
        if self._step_index == 0:
            self._start(timestep, sample, generator if generator is not None else self._set_generator, eta)
        else:
            self._check_same(generator, eta)
        x, sigma = self._request
        denoised = vp_output_to_denoised(model_output, x, torch.tensor(float(sigma), dtype=x.dtype, device=x.device),
                                         self.config.prediction_type)
        try:
            self._request = self._steps.send(denoised)
            x_next, sigma_next = self._request
        except StopIteration as done:
            x_next, sigma_next = done.value, self.grid[-1]
        self._step_index += 1
        prev_sample = (x_next / math.sqrt(1 + float(sigma_next) ** 2)).to(sample.dtype)
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    def _start(self, timestep, sample: torch.Tensor, generator, eta) -> None:
        if float(timestep) != float(self.timesteps[0]):
            raise ValueError(f"the first step must be at timestep {float(self.timesteps[0]):.6g}, got "
                             f"{float(timestep):.6g}; starting part-way (img2img strength < 1) is not supported")
        options = self._with_eta(eta)
        work = torch.float32 if sample.device.type == "mps" else torch.float64
        self._generator, self._eta = generator, options.get("eta", 0.0)
        x = sample.to(work) * math.sqrt(1 + float(self.sigmas[0]) ** 2)
        self._steps = self._trajectory(x, self.grid, generator, options)
        self._request = next(self._steps)

    def _check_same(self, generator, eta) -> None:
        """Mid-trajectory, `step()` may repeat the first step's generator and eta, not change them."""
        if generator is not None and self._solver.stochastic and generator is not self._generator:
            raise ValueError("step() got a different generator mid-trajectory; pass the same one to every step")
        if eta and self._with_eta(eta)["eta"] != self._eta:
            raise ValueError(f"step() got eta={eta} mid-trajectory, which runs with eta={self._eta}; "
                             f"pass the same eta to every step")

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """`x_vp = (x0 + sigma_t noise) / sqrt(1 + sigma_t^2)` (= `sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`)
        with `log sigma_t` interpolated linearly at (fractional) `timesteps`, one per sample or one
        for all (`sigma_of_timestep`)."""
        sigma = sigma_of_timestep(torch.as_tensor(timesteps).double().cpu().reshape(-1), self.log_sigmas)
        sigma = sigma.to(original_samples.device).reshape(-1, *[1] * (original_samples.ndim - 1))
        x = (original_samples.double() + sigma * noise.double()) / (1 + sigma ** 2).sqrt()
        return x.to(original_samples.dtype)
