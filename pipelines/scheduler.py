"""`FewstepScheduler`: this package's samplers as a diffusers scheduler (docs/conventions.md §5).

    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, sampler="dpmpp_2m")

The pipeline stays in VP space: it starts from unit-variance noise (`init_noise_sigma = 1`,
`scale_model_input` is the identity) and feeds the UNet `x_vp = x / sqrt(1 + sigma^2)` at the
fractional timestep `t(sigma)`. Each `step()` turns the model output into `D(x, sigma)`
(`vp_output_to_denoised`), sends it to the sampler's step generator (`solvers.SOLVERS`, the one
implementation of each algorithm) and returns the next point the generator asks about,
`x_next / sqrt(1 + sigma_next^2)`, or the final sample at the grid's last sigma (0, or DDIM's
`sigma(t=0)` with `set_alpha_to_one=False`; Euler and Heun return the unscaled `x` there, as
diffusers' do). The generator keeps its own state (`x = x_vp sqrt(1 + sigma^2)`, multistep history;
float32 or float64: `_work_dtype`). At every step it checks whether the pipeline changed the point it
returned (an inpainting blend, a `callback_on_step_end` edit, in place or by a new tensor): then the
sampler continues from the pipeline's point, as diffusers' schedulers do; otherwise from its own.
The conventions of the scheduler each sampler mirrors (defaults, clipping, saved tables) are in
`conventions.py`.

Flow-matching pipelines (`prediction_type="flow_prediction"`, which `from_config` sets for a
FlowMatchEulerDiscreteScheduler config) work the same way in the flow's own coordinates
(`timesteps.FlowTime`): the pipeline's sample is `x_t = x / (1 + sigma)`, the UNet sees
`t * num_train_timesteps` and returns the velocity; the samplers step in t (`spaces.FLOW_TIME`), so
t = 1 is an ordinary start. Euler on the shifted `flow_uniform` grid is then exactly
FlowMatchEulerDiscreteScheduler's Euler, and Heun its FlowMatchHeunDiscreteScheduler.
"""
from __future__ import annotations

import inspect
import json
import numbers
from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from ..samplers.flow_shift import FlowShift
from ..samplers.schedules import EPS_S, RHO
from ..samplers.solvers import SOLVERS, at_step_starts, evaluated_sigmas, extras
from ..samplers.spaces import is_flow_matching
from ..tuning import schedule_tables, solver_tables
from . import construction, conventions, plans
from .plans import FLOW
from .state import FLOAT32_SIGMA_MAX, copy_states, fresh_like, version
from .timesteps import FlowTime, VPTable

NOISE_TABLE_KEYS = ("beta_schedule", "trained_betas")
# diffusers' schedulers whose configs `from_config` takes: those on a VP noise table (beta_schedule,
# trained_betas) and flow matching; not EDM's, which has no table.
COMPATIBLES = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
               "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
               "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
               "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler",
               "FlowMatchEulerDiscreteScheduler"]


class FewstepScheduler(SchedulerMixin, ConfigMixin):
    """Any fixed-grid sampler of `samplers.solvers` on a discrete VP model or a flow-matching model,
    one `step()` per network evaluation.

    Noise table (as diffusers' schedulers): num_train_timesteps, beta_start, beta_end,
        beta_schedule, trained_betas; prediction_type: epsilon, v_prediction or sample.
        prediction_type="flow_prediction": a rectified flow / flow-matching model instead (no table;
        diffusers' FlowMatchEulerDiscreteScheduler, `t = timestep / num_train_timesteps`).
    sampler: ddim, euler, heun, dpmpp_2m, ipndm, dpm_2, amed, amed_plugin or learned; sampler_options: its keywords,
        e.g. {"eta": 1.0} (not afs=True: the pipeline's first evaluation is on its starting noise).
    schedule: karras (rho), logsnr, time_uniform (eps_s), flow_uniform over [sigma_min, sigma_max] (None: the
        table's range; a flow's is t from 1 / num_train_timesteps to 1: `timesteps.FlowTime`); None:
        karras on a VP table, flow_uniform
        (FlowMatchEulerDiscreteScheduler's own grid) on a flow; or discrete (VP only): exactly the
        timesteps and sigmas of the diffusers scheduler the sampler mirrors
        (`schedules.DISCRETE_MIRRORS`: DDIMScheduler for ddim and ipndm,
        DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler) for
        timestep_spacing and steps_offset, ending at 0, or at the table's `sigma(0)`: for ddim and
        ipndm with `set_alpha_to_one=False` as DDIMScheduler does, for the others with
        `final_sigmas_type="sigma_min"` as DPM-Solver and Euler do; the other schedules end with a
        step to 0, or with `final_sigmas_type="sigma_min"` return the sample at sigma_min.
    schedule_table: a searched table (`schedule_tables`, scripts/search_schedule.py): its file, or a
        model directory or shipped model name whose table for this sampler to use; `set_timesteps(n)`
        then plans its grid of `n` steps. The scheduler cannot see the weights, so check that the
        table was searched for the pipeline's model.
    guidance_scale: the pipeline's guidance scale, for `schedule_table`: the table searched at it
        (`<sampler>-cfg<W>.json`); a scale without one is refused naming the scales there are.
    frozen_table: AMED's frozen table (amed or amed_plugin; `frozen_table.json` or the predictor directory
        holding it, e.g. `assets/digits_ddpm/amed/amed-nfe5`): its per-step r and c (and base), and its
        grid, which `set_timesteps(n)` plans for the table's n steps. Without AFS a pipeline spends one
        NFE more than the table's. The weights are not checked: use it with the model it was made for.
    solver_table: the learned solver's table (sampler learned; `tuning.solver_tables`, scripts/fit_solver.py):
        its file, or a model directory or shipped model name holding `solvers/learned.json`; `set_timesteps(n)`
        then plans its grid of `n` NFE and runs that entry's weights (without it, learned runs
        DPM-Solver++(2M)'s weights). The fingerprint is not checked: use it with the model it was fitted for.
    rescale_betas_zero_snr: the zero-terminal-SNR table (Lin et al. 2024), whose last
        `alphas_cumprod` (0) is set to 2^-24 as EulerDiscreteScheduler does (sigma_max about 4096).
    shift, use_dynamic_shifting, time_shift_type, shift_terminal, base_shift, max_shift, base_image_seq_len,
        max_image_seq_len: a flow-matching config's time shift (SD3's static `shift`, Flux's dynamic one with
        `set_timesteps(..., mu=)`), applied as FlowMatchEulerDiscreteScheduler applies it, to the
        flow_uniform grid and to a pipeline's `sigmas` (`samplers.flow_shift`).
        `set_timesteps(n)` makes `n` sampler steps; `timesteps` lists one (fractional) timestep per
        network evaluation, so heun, dpm_2, amed and amed_plugin interleave them and have `order` 2.
    timestep_spacing None (a config without it): the mirrored scheduler's default. clip_sample,
        clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value: applied to D as
        the mirrored scheduler applies them (`conventions.CLIPPING`; another sampler refuses them).
    A stochastic sampler (ddim with eta > 0) draws each step's noise from the generator given to that
    `step()`, else to the first one (or to `set_timesteps`). `step(..., eta)` (as DDIMScheduler's, which
    pipelines pass) sets ddim's eta for the trajectory in place of `sampler_options["eta"]`; eta 0
    means "not given" (pipelines pass 0 by default), so `sampler_options` then decides.
    """

    _compatibles = COMPATIBLES
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str | None = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 rescale_betas_zero_snr: bool = False, timestep_spacing: str | None = None, steps_offset: int = 0,
                 set_alpha_to_one: bool = True, final_sigmas_type: str = "zero", clip_sample: bool = False,
                 clip_sample_range: float = 1.0, thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 sample_max_value: float = 1.0,
                 sampler: str = "ddim", sampler_options: dict | None = None, schedule: str | None = None,
                 rho: float = RHO, sigma_min: float | None = None, sigma_max: float | None = None,
                 eps_s: float = EPS_S, schedule_table: str | None = None, frozen_table: str | None = None,
                 solver_table: str | None = None, guidance_scale: float | None = None,
                 shift: float = 1.0, use_dynamic_shifting: bool = False, time_shift_type: str = "exponential",
                 shift_terminal: float | None = None, base_shift: float = 0.5, max_shift: float = 1.15,
                 base_image_seq_len: int = 256, max_image_seq_len: int = 4096):
        self._frozen, self._learned, sampler_options = construction.read_tables(
            sampler, sampler_options, schedule, schedule_table, frozen_table, solver_table)
        self._options = construction.check_sampler(sampler, sampler_options, prediction_type,
                                                   {"clip_sample": clip_sample, "thresholding": thresholding},
                                                   final_sigmas_type)
        self.order = SOLVERS[sampler].nfe(1, False, self._options)  # evaluations per step: 2 for heun, dpm_2, amed
        self.num_inference_steps = self.grid = self.sigmas = self._plan_key = self._weights = self._karras = None
        self._step_index = self._begin_index = self._set_generator = None
        self._steps = self._request = self._generator = self._rng = self._eta = self._shape = None
        self._returned = self._version = self._timestep_values = None
        flow_shift = FlowShift(shift, use_dynamic_shifting, time_shift_type, shift_terminal, base_shift, max_shift,
                               base_image_seq_len, max_image_seq_len)
        if prediction_type == FLOW:
            if schedule == "discrete":
                raise ValueError("schedule 'discrete' needs a VP noise table; a flow's own grid is flow_uniform")
            self._space, self._schedule = FlowTime(num_train_timesteps, flow_shift), schedule or "flow_uniform"
            self.betas = self.alphas = self.alphas_cumprod = self.log_sigmas = None
            # before set_timesteps, as FlowMatchEulerDiscreteScheduler: every training timestep, descending
            self.timesteps = torch.arange(num_train_timesteps, 0, -1, dtype=torch.float32)
            return
        if not flow_shift.identity:
            raise ValueError(f"shift={shift}, use_dynamic_shifting={use_dynamic_shifting}, shift_terminal="
                             f"{shift_terminal} are for flow-matching models (prediction_type={FLOW!r}); "
                             f"this is a VP model (prediction_type={prediction_type!r})")
        self.betas, self.alphas, alphas_cumprod = construction.vp_table(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr)
        self._space, self._schedule = VPTable(alphas_cumprod), schedule or "karras"
        self.alphas_cumprod, self.log_sigmas = alphas_cumprod, self._space.log_sigmas
        tabled = self._frozen is not None or schedule_table is not None or self._learned is not None
        if self._schedule == "karras" and not tabled and SOLVERS[sampler].evaluated is at_step_starts:
            self._karras = plans.karras_plan(self._space, sigma_min, sigma_max, rho, final_sigmas_type)
        # before set_timesteps, as diffusers' VP schedulers: every training timestep, descending
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    @property
    def _solver(self):
        """The registry entry of the configured sampler (looked up, not stored: schedulers pickle)."""
        return SOLVERS[self.config.sampler]

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As `ConfigMixin.from_config`, but a FlowMatchEulerDiscreteScheduler config gives the flow
        mode (`prediction_type="flow_prediction"`, its shifts honoured), a config without a VP noise table
        (an EDM scheduler's) is refused instead of silently getting the default betas, and so is a
        keyword that is not an option of this scheduler (the config's own keys belong to the scheduler
        it replaces and are left out). Another scheduler's clipping keys are read as the sampler's mirrored
        scheduler reads them (`conventions.adopted`)."""
        defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self"}
        params = list(defaults)
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(f"FewstepScheduler has no option {', '.join(unknown)}; its options: {', '.join(params)}")
        vp = isinstance(config, dict) and any(key in config or key in kwargs for key in NOISE_TABLE_KEYS)
        # a flow-matching config; not one that keeps a VP config's keys from a round trip (diffusers keeps them)
        if isinstance(config, dict) and is_flow_matching(config) and not vp:
            FlowShift.from_config(config)  # refuses the keys it does not follow
            kwargs.setdefault("prediction_type", FLOW)
        elif isinstance(config, dict) and not vp:
            keys = ", ".join(sorted(k for k in config if not k.startswith("_")))
            raise ValueError(f"the scheduler config has no noise table (no beta_schedule or trained_betas): "
                             f"{config.get('_class_name', 'a config')} with keys {keys}")
        elif vp and "sampler" not in config:  # another scheduler's config, not ours on a round trip
            config = conventions.adopted(config, kwargs.get("sampler", config.get("sampler", "ddim")), defaults)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """As diffusers', and the table files the config names (`schedule_table`, `frozen_table`) are
        copied beside the config and named relatively, so the saved folder may move."""
        super().save_pretrained(save_directory, **kwargs)
        carried = conventions.carry_tables(dict(self.config), save_directory)
        if carried:
            path = Path(save_directory) / self.config_name
            path.write_text(json.dumps({**json.loads(path.read_text()), **carried}, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As diffusers', with the table files of a saved folder (`save_pretrained`) found in it."""
        loaded = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        folder = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        config.update(conventions.resolve_tables(config, folder))
        return loaded

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def _trajectory(self, x: torch.Tensor, grid: torch.Tensor, generator, options: dict):
        """The sampler's step generator down `grid`, starting at `x` (sigma space)."""
        return self._solver.run(x, grid, **options, **extras(self._solver, generator, self._space.step_time))

    def _with_eta(self, eta) -> dict:
        """`sampler_options`, with a nonzero `step()` eta in place of theirs (0 or None: theirs)."""
        if not eta:
            return self._options
        if "eta" not in self._solver.options:
            raise ValueError(f"sampler {self.config.sampler!r} has no eta, got eta={eta}; "
                             f"only ddim is stochastic (eta 0 or None is accepted)")
        return {**self._options, "eta": float(eta)}

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None,
                      generator=None, mu: float | None = None) -> None:
        """Plan a trajectory, from exactly one of: `num_inference_steps` sampler steps on the
        configured schedule; `sigmas`, a strictly decreasing sigma list (sigma space, the
        `sqrt((1 - abar) / abar)` of diffusers' Euler and Heun schedulers) whose last entry is where
        the sampler ends (0, or a sigma at which the sample is returned), as EulerDiscreteScheduler
        takes it; or `timesteps`, training timesteps in decreasing order, each the start of a step,
        then a last step to sigma 0, as DPMSolverMultistepScheduler takes them.

        Sets `grid` (the sigma list), `sigmas` (the sigmas the sampler evaluates, in order, then
        the grid's last) and their timesteps `t(sigma)` (`timesteps`, float32 on `device`).
        On a flow, `sigmas` are its times t in (0, 1] (as FlowMatchEulerDiscreteScheduler takes them), and
        they and the flow_uniform grid are shifted as the config says; `mu`: the dynamic shift's (Flux).
        A pipeline calls this once per generation, so the last plan is reused when nothing changed."""
        plans.check_mu(self._space, self.config.prediction_type, mu)
        custom = self._custom_plan(num_inference_steps, timesteps, sigmas)
        key = (num_inference_steps, custom, mu, device)
        if key != self._plan_key:
            self._weights = None
            if custom is None and self._karras is not None:  # the default plan, in one numpy pass
                grid, timesteps = self._karras(num_inference_steps)
                self.grid = self.sigmas = grid
                self.timesteps = timesteps if device is None else timesteps.to(device)
                self.num_inference_steps = num_inference_steps
            else:
                grid, timestep_of = (self._grid(num_inference_steps, mu) if custom is None
                                     else self._custom_grid(custom, mu))
                self.grid, self.sigmas, self.timesteps = self._plan(grid, timestep_of, device)
                self.num_inference_steps = len(self.grid) - 1
            self._plan_key = key
        self._step_index, self._begin_index, self._set_generator = None, None, generator
        self._steps = None

    def _custom_plan(self, steps, timesteps, sigmas) -> tuple | None:
        """`(kind, values)` of a pipeline's own `timesteps` or `sigmas` (float64 values), None for `steps`
        steps; refused in one line unless exactly one of them is given and `steps` is a whole number >= 1."""
        if timesteps is None and sigmas is None:
            if type(steps) is int and steps >= 1:  # the common case, checked first
                return None
            if steps is not None and isinstance(steps, numbers.Integral) and steps >= 1:
                return None
        given = [name for name, value in (("num_inference_steps", steps), ("timesteps", timesteps),
                                          ("sigmas", sigmas)) if value is not None]
        if len(given) != 1:
            raise ValueError(f"set_timesteps takes exactly one of num_inference_steps, timesteps, sigmas; "
                             f"got {', '.join(given) or 'none'}")
        if steps is not None:
            raise ValueError(f"num_inference_steps must be a whole number of at least 1 for sampler "
                             f"{self.config.sampler!r}, got {steps}")
        values = torch.as_tensor(sigmas if sigmas is not None else timesteps, dtype=torch.float64)
        return "timesteps" if sigmas is None else "sigmas", tuple(values.reshape(-1).tolist())

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next trajectory at `timesteps[begin_index]` (diffusers' convention: img2img and
        inpainting pipelines with strength < 1 call it with `t_start * order` after cutting the first
        timesteps off); it must be the start of a sampler step."""
        self._begin_index = int(begin_index)

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    @property
    def step_index(self) -> int | None:
        """The index in `timesteps` of the next evaluation (None before the first step)."""
        return self._step_index

    def _grid(self, steps: int, mu=None) -> tuple[torch.Tensor, dict]:
        """The sigma grid of the configured schedule, and `{sigma: timestep}` for the discrete
        schedule, whose timesteps are the mirrored diffusers scheduler's (empty otherwise); a flow's
        own grid (flow_uniform) planned as the mirrored flow scheduler plans it (`FlowTime.sigma_min_of_plan`)
        and shifted as FlowMatchEulerDiscreteScheduler shifts it."""
        c = self.config
        if self._frozen is not None:
            grid = schedule_tables.check_start(self._frozen["sigmas"], self._space.sigma_max,
                                               f"frozen_table={c.frozen_table}", "this scheduler's")
            if steps != len(grid) - 1:
                raise ValueError(f"frozen_table={c.frozen_table} is a grid of {len(grid) - 1} steps; "
                                 f"got num_inference_steps={steps}")
            return grid, {}
        if self._learned is not None:
            path, table = self._learned
            grid, self._weights = solver_tables.entry(table, path, steps)
            return schedule_tables.check_start(grid, self._space.sigma_max, f"{path} NFE {steps}",
                                               "this scheduler's"), {}
        if c.schedule_table is not None:
            path = schedule_tables.table_file(c.schedule_table, c.sampler, c.guidance_scale)
            return schedule_tables.grid_of_steps(path, c.sampler, self._options, steps, self._space.sigma_max,
                                                 c.guidance_scale), {}
        return plans.schedule_grid(c, self._schedule, self._space, steps, self.alphas_cumprod, mu)

    def _custom_grid(self, custom: tuple, mu) -> tuple[torch.Tensor, dict]:
        """`plans.custom_grid` of a pipeline's own `sigmas` or `timesteps`; refused with a solver table, whose
        weights belong to its own grids."""
        if self._learned is not None:
            raise ValueError(f"solver_table={self.config.solver_table} gives the grid with its weights; "
                             f"set_timesteps takes num_inference_steps (an NFE it has), not {custom[0]}")
        return plans.custom_grid(self._space, self.config.num_train_timesteps, *custom, mu)

    def _plan(self, grid: torch.Tensor, timestep_of: dict, device):
        """The sigmas the sampler evaluates (a one-call sampler: the grid's but its end; else
        `solvers.evaluated_sigmas`), then the grid's last, and each one's timestep: the given one (discrete
        schedule, custom timesteps) or the space's fractional `timestep(sigma)`, planned in numpy (quicker
        than torch on a few values)."""
        sigmas = grid
        if self._solver.evaluated is not at_step_starts:  # FewstepScheduler takes no afs
            evaluated = evaluated_sigmas(self.config.sampler, grid, self._options, self._space.step_time)
            sigmas = torch.tensor([*evaluated, float(grid[-1])], dtype=torch.float64)
        evaluated = sigmas.numpy()[:-1]
        timesteps = self._space.timestep(evaluated)
        if timestep_of:
            timesteps = np.array([timestep_of.get(s, t) for s, t in zip(evaluated.tolist(), timesteps.tolist())])
        timesteps = torch.from_numpy(timesteps.astype(np.float32))
        return grid, sigmas, timesteps if device is None else timesteps.to(device)

    def _step_starts(self) -> dict[int, int]:
        """`{index in timesteps: index in grid}` of the evaluations that start a sampler step (where
        a trajectory may begin): step `k` starts after the evaluations of the `k` steps before it."""
        return {self._solver.nfe(k, False, self._options): k for k in range(len(self.grid) - 1)}

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The identity: the pipeline's sample is already the UNet input `x_vp`."""
        return sample

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise=None,
             return_dict: bool = True, **pipeline_kwargs):
        """Answer the sampler's pending request `(x, sigma)` with
        `D = vp_output_to_denoised(model_output, x, sigma)` and return the next request's
        `x_vp = x_next / sqrt(1 + sigma_next^2)` (the final sample after the last evaluation).

        `x` is the sampler's own point, unless the pipeline's `sample` differs from what the
        last step returned (the pipeline edited it): then `x = sample sqrt(1 + sigma^2)`.
        The first step starts the trajectory at `timesteps[begin_index]` (set_begin_index; else the
        position of `timestep` in the plan; without any set_timesteps, the plan is
        `num_train_timesteps` steps, as diffusers' Euler has it), binds `generator` (else the one
        given to `set_timesteps`) and `eta`. The signature is DDIMScheduler's, so pipelines that
        look for `eta` pass it: a nonzero eta replaces `sampler_options["eta"]` for the trajectory
        (ddim only; another sampler refuses it), 0 or None leaves sampler_options' (pipelines pass
        eta=0 by default); a different nonzero eta later is refused. use_clipped_model_output: ddim's
        eps from the clipped D (DDIMScheduler's); variance_noise is refused (the sampler draws its own)."""
        if pipeline_kwargs:
            raise ValueError(f"step() takes no sampler keywords, got {pipeline_kwargs}; set them in sampler_options")
        if variance_noise is not None:
            raise ValueError("step() takes no variance_noise: the sampler draws its own noise from generator")
        if self.grid is None:  # as diffusers' Euler and Heun: without set_timesteps, every training timestep
            self.set_timesteps(self.config.num_train_timesteps, device=sample.device)
        if self._steps is None and self._step_index is not None:
            raise ValueError("call set_timesteps(num_inference_steps) before stepping a new trajectory")
        if self._steps is None:
            self._start(timestep, sample, generator if generator is not None else self._set_generator, eta)
        else:
            self._check_same(timestep, sample, generator, eta)
        x, sigma = self._request
        if self._edited(sample):  # the pipeline changed the point: continue from there
            x = sample.to(x.dtype) * self._space.scale(float(sigma))
        denoised = self._space.denoised(model_output, x, torch.as_tensor(sigma, dtype=x.dtype),
                                        self.config.prediction_type)
        if self.config.clip_sample or self.config.thresholding:
            kept = conventions.clipped(self, denoised)
            if self.config.sampler == "ddim" and not use_clipped_model_output:  # DDIM keeps the model's epsilon
                x = x - denoised + kept
            denoised = kept
        self._step_index += 1
        source = generator if generator is not None else self._generator
        copy_states(self._rng, source)  # this step draws from its own generator, as DDIMScheduler's
        try:
            self._request = self._steps.send((x, denoised))
            x_next, sigma_next = self._request
        except StopIteration as done:
            x_next, sigma_next, self._steps = done.value, self.grid[-1], None
        copy_states(source, self._rng)
        unscaled = self._steps is None and sigma_next > 0 and conventions.returns_unscaled(self.config.sampler)
        prev_sample = (x_next if unscaled else x_next / self._space.scale(float(sigma_next))).to(sample.dtype)
        self._returned, self._version = prev_sample, version(prev_sample)
        if self._version is None:  # inference mode keeps no version counter: keep a copy instead
            self._returned = prev_sample.clone()
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    def _edited(self, sample: torch.Tensor) -> bool:
        """Whether `sample` is not what the last step returned: another tensor with other values, or
        the returned one changed in place (its version counter moved)."""
        if self._version is not None and version(self._returned) != self._version:
            return True
        return sample is not self._returned and not torch.equal(sample, self._returned)

    def _start(self, timestep, sample: torch.Tensor, generator, eta) -> None:
        """Begin the sampler's trajectory at the step that starts at `timesteps[begin]`, from `sample`."""
        starts = self._step_starts()
        begin = self._begin_index
        if begin is None:  # a pipeline that does not call set_begin_index: find the timestep
            planned = self._planned_timesteps()
            begin = next((i for i in starts if planned[i] == float(timestep)), None)
            if begin is None:
                raise ValueError(f"step() at timestep {float(timestep):.6g}, which starts no step of the plan "
                                 f"(timesteps {[round(float(t), 3) for t in self.timesteps]})")
        elif begin not in starts:
            raise ValueError(f"begin_index={begin} is not the start of a sampler step: use one of {sorted(starts)}")
        elif float(timestep) != float(self.timesteps[begin]):
            raise ValueError(f"the first step must be at timestep {float(self.timesteps[begin]):.6g} "
                             f"(begin_index {begin}), got {float(timestep):.6g}")
        options = self._with_eta(eta)
        if self._weights is not None:  # a solver table's: the rows of the steps from this one on
            options = {**options, "weights": self._weights[starts[begin]:]}
        bound = generator if self._solver.stochastic else None
        self._generator, self._rng, self._eta, self._shape = bound, fresh_like(bound), options.get("eta"), sample.shape
        grid = self.grid[starts[begin]:]
        x = sample.to(self._work_dtype(sample)) * self._space.scale(float(grid[0]))
        self._steps = self._trajectory(x, grid, self._rng, options)
        self._request = next(self._steps)
        self._step_index, self._returned, self._version = begin, sample, version(sample)

    def _work_dtype(self, sample: torch.Tensor) -> torch.dtype:
        """The sampler's state: float32 (the pipeline's precision, as diffusers' schedulers) unless the
        sample is float64 or the plan reaches above `FLOAT32_SIGMA_MAX` (a flow's 1e8, a zero-SNR
        table's 4096, DDPM's 157), where float32's cancellation in `x = x_vp sqrt(1 + sigma^2)` shows; MPS:
        float32. On Stable Diffusion's table float32 stays within 1e-5 of float64 (tested)."""
        if sample.device.type == "mps":
            return torch.float32
        exact = sample.dtype == torch.float64 or float(self.grid[0]) > FLOAT32_SIGMA_MAX
        return torch.float64 if exact else torch.float32

    def _check_same(self, timestep, sample, generator, eta) -> None:
        """Mid-trajectory, `step()` must come at the planned timestep with a sample of the first
        one's shape, and may repeat the first step's generator and eta, not change them."""
        planned = self._planned_timesteps()[self._step_index]
        if float(timestep) != planned:
            raise ValueError(f"step() at timestep {float(timestep):.6g}, but the plan's next timestep is "
                             f"{planned:.6g} (step index {self._step_index})")
        if sample.shape != self._shape:
            raise ValueError(f"step() got a sample of shape {tuple(sample.shape)}; the trajectory started with "
                             f"shape {tuple(self._shape)}")
        if generator is not None and self._solver.stochastic and self._generator is None:
            raise ValueError("step() got a generator mid-trajectory, but the trajectory started without one; "
                             "pass it to the first step() or to set_timesteps")
        if eta and self._with_eta(eta)["eta"] != self._eta:
            raise ValueError(f"step() got eta={eta} mid-trajectory, which runs with eta={self._eta}; "
                             f"pass the same eta to every step")

    def _planned_timesteps(self) -> list[float]:
        """`timesteps` as Python floats, read once per plan (no device read at every step)."""
        if self._timestep_values is None or self._timestep_values[0] is not self.timesteps:
            self._timestep_values = (self.timesteps, self.timesteps.tolist())
        return self._timestep_values[1]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The pipeline's sample `(x0 + sigma_t noise) / scale(sigma_t)` for `timesteps`, one per sample
        or one for all: on a VP table `sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`, on a flow
        `(1 - t) x0 + t noise`. A timestep of the plan gets the plan's own sigma (so a trajectory
        started there begins on its grid), any other the space's `sigma(t)` (VP: `log sigma_t`
        interpolated linearly)."""
        t = torch.as_tensor(timesteps).double().cpu().reshape(-1)
        sigma = self._space.sigma(t)
        if self.grid is not None:
            planned = dict(zip(self.timesteps.double().cpu().tolist(), self.sigmas.tolist()))
            sigma = torch.tensor([planned.get(v, s) for v, s in zip(t.tolist(), sigma.tolist())], dtype=torch.float64)
        sigma = sigma.to(original_samples.device).reshape(-1, *[1] * (original_samples.ndim - 1))
        x = (original_samples.double() + sigma * noise.double()) / self._space.scale(sigma)
        return x.to(original_samples.dtype)

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """FlowMatchEulerDiscreteScheduler's name and argument order for `add_noise` (flow image-to-image pipelines)."""
        return self.add_noise(sample, noise, timestep)
