"""What `FewstepScheduler.__init__` checks and reads once (docs/conventions.md §5): the tables that give
the whole grid (a searched schedule, AMED's frozen table, a learned solver's table), the sampler and
its options as a scheduler can run them, and the VP noise table of the config."""
from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from ..samplers.denoisers import DiffusersUNetDenoiser
from ..samplers.solvers import FIXED_GRID_NAMES, SOLVERS, resolve_options
from ..tuning import amed_predictor, solver_tables
from . import conventions
from .plans import FLOW


def _grid_giver(schedule, schedule_table, frozen_table) -> str | None:
    """The first of schedule_table, frozen_table and schedule given (what a whole-grid table excludes)."""
    if schedule_table is not None:
        return "schedule_table"
    if frozen_table is not None:
        return "frozen_table"
    return None if schedule is None else f"schedule={schedule!r}"


def read_tables(sampler: str, sampler_options: dict | None, schedule, schedule_table, frozen_table,
                solver_table) -> tuple[dict | None, tuple | None, dict | None]:
    """`(frozen, solver, sampler_options)`: AMED's frozen table (its r, c and base merged into the
    options), the learned solver's `(file, table)` (`tuning.solver_tables.load`), each refused in one line beside
    another table or a schedule, with another sampler, or with the options it gives itself."""
    if schedule_table is not None and schedule not in (None, "table"):
        raise ValueError(f"schedule_table={schedule_table} gives the whole grid; it takes no schedule={schedule!r}")
    solver = None
    if solver_table is not None:
        if sampler != solver_tables.NAME:
            raise ValueError(f"solver_table={solver_table} holds a learned solver's grids and weights: it needs "
                             f"sampler={solver_tables.NAME!r}, got sampler={sampler!r}")
        other = _grid_giver(schedule, schedule_table, frozen_table)
        if other is not None:
            raise ValueError(f"solver_table={solver_table} gives the whole grid; it takes no {other}")
        _check_not_given(f"solver_table={solver_table}", "the weights", sampler_options, ("weights",))
        path = solver_tables.table_file(solver_table)
        solver = (str(path), solver_tables.load(path))
    frozen = None
    if frozen_table is not None:
        other = _grid_giver(schedule, schedule_table, None)
        if other is not None:
            raise ValueError(f"frozen_table={frozen_table} gives the whole grid; it takes no {other}")
        frozen = amed_predictor.read_frozen_table(frozen_table, sampler)
        _check_not_given(f"frozen_table={frozen_table}", f"{sampler}'s r and c", sampler_options, ("r", "c", "base"))
        learned = {k: v for k, v in frozen["sampler_options"].items() if k != "afs"}
        sampler_options = {**(sampler_options or {}), **learned}
    return frozen, solver, sampler_options


def _check_not_given(table: str, gives: str, options: dict | None, keys) -> None:
    given = sorted(set(options or {}) & set(keys))
    if given:
        raise ValueError(f"{table} gives {gives}: drop sampler_options {', '.join(given)}")


def check_sampler(sampler: str, sampler_options: dict | None, prediction_type: str, clipping: dict,
                  final_sigmas_type: str) -> dict:
    """The sampler's resolved options, refused in one line when a scheduler cannot run them: an adaptive
    or unknown sampler, an AMED predictor, afs, an unknown prediction type or final_sigmas_type, a
    clipping option the mirrored scheduler does not apply."""
    if sampler in SOLVERS and SOLVERS[sampler].adaptive:
        raise ValueError(f"sampler {sampler!r} is adaptive and cannot run one step() at a time; "
                         f"use one of {', '.join(FIXED_GRID_NAMES)}")
    if sampler not in FIXED_GRID_NAMES:
        raise ValueError(f"unknown sampler {sampler!r}: use one of {', '.join(FIXED_GRID_NAMES)}")
    options = resolve_options(sampler, sampler_options)
    if options.get("predictor") is not None:
        raise ValueError(f"FewstepScheduler cannot take an AMED predictor (a network reading the UNet's bottleneck, "
                         f"no config value; on the command line sampler.options.predictor=null): give {sampler} "
                         f"its frozen table, frozen_table=DIR or sampler_options r=[...], c=[...]")
    if options.get("afs"):
        raise ValueError("FewstepScheduler cannot take afs=True: a pipeline evaluates the model on its starting "
                         "noise, the call the analytical first step skips; use afs with samplers.sample")
    if prediction_type not in (*DiffusersUNetDenoiser.PREDICTION_TYPES, FLOW):
        raise ValueError(f"unsupported prediction_type {prediction_type!r}: "
                         f"use one of {', '.join(DiffusersUNetDenoiser.PREDICTION_TYPES)}, {FLOW}")
    conventions.check_clipping(sampler, clipping)
    if final_sigmas_type not in ("zero", "sigma_min"):
        raise ValueError(f"unknown final_sigmas_type {final_sigmas_type!r}: use zero or sigma_min")
    return options


def vp_table(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule, trained_betas,
             rescale_betas_zero_snr: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(betas, alphas, alphas_cumprod)` of the config's noise table as diffusers makes it (`alphas_cumprod`
    float64; zero terminal SNR's last one 2^-24, as EulerDiscreteScheduler sets it), refused in one line
    without a table or with one whose `alphas_cumprod` reaches 0 (sigma infinite)."""
    if beta_schedule is None and trained_betas is None:
        raise ValueError("the scheduler config has no noise table: beta_schedule and trained_betas are both None")
    try:
        table = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                              beta_schedule=beta_schedule, trained_betas=trained_betas,
                              rescale_betas_zero_snr=rescale_betas_zero_snr)
    except NotImplementedError:
        raise ValueError(f"unsupported beta_schedule {beta_schedule!r}") from None
    alphas_cumprod = table.alphas_cumprod.double()
    if rescale_betas_zero_snr:
        alphas_cumprod[-1] = 2.0 ** -24
    if not alphas_cumprod[-1] > 0:
        raise ValueError(f"the noise table's alphas_cumprod reaches 0 in float32 at timestep "
                         f"{int((alphas_cumprod > 0).sum())} of {num_train_timesteps} (sigma infinite): use a "
                         f"table with less total noise, or rescale_betas_zero_snr=True")
    return table.betas, table.alphas, alphas_cumprod
