"""The one registry of samplers, `SOLVERS`, and the drivers that run them (docs/conventions.md §4), in
EDM's sigma space.

Each fixed-grid sampler is a step generator (`samplers.steps`, AMED's in `samplers.amed`): it yields
`(x, sigma)` whenever it needs `D(x, sigma)` and receives back `(x, D)`. `solve()` drives it with a
denoiser, differentiably; `sample()` is `solve()` from noise, without gradients; `sample_seeds()` draws
that noise from one seed per sample; `pipelines.FewstepScheduler` drives the same generator one diffusers
`step()` at a time. An entry also says which options the sampler takes and how many calls it makes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Mapping

import torch

from .amed import amed, amed_plugin, dpm_2, watching
from .learned import learned
from .noise import generators, normal
from .spaces import SIGMA_TIME, StepTime
from .steps import ddim, dopri5, dpmpp_2m, heun, ipndm

def analytical_first_step(steps: int, options: Mapping) -> int:
    """The call `afs` saves: 1 if it is on and there is a step."""
    return int(steps > 0 and bool(options.get("afs")))


def one_per_step(steps: int, ends_at_zero: bool, options: Mapping) -> int:
    return steps - analytical_first_step(steps, options)


def two_per_step(steps: int, ends_at_zero: bool, options: Mapping) -> int:
    """Heun's, DPM-Solver-2's, AMED's: a step to sigma = 0 is Euler, one call."""
    return 2 * steps - int(ends_at_zero) - analytical_first_step(steps, options)


def at_step_starts(sigmas: list, options: Mapping) -> list:
    """The sigmas a one-call-per-step sampler evaluates on the grid `sigmas`, in order: every step's
    start (but the first with afs)."""
    return sigmas[analytical_first_step(len(sigmas) - 1, options):-1]


def at_both_ends(sigmas: list, options: Mapping) -> list:
    """Heun's: every step's start, then its end unless it is 0 (that step is Euler); the first start not
    with afs."""
    points = []
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        points += [sigma] if sigma_next == 0 else [sigma, sigma_next]
    return points[analytical_first_step(len(sigmas) - 1, options):]


def counted_as_it_goes(steps: int, ends_at_zero: bool, options: Mapping) -> None:
    return None


@dataclass(frozen=True)
class Solver:
    """A sampler. run: its step generator `(x, sigmas, **options)`, or if `adaptive` a function
    `(denoise, x, sigmas, **options)` that calls the denoiser itself. options: the keywords it
    takes, with their defaults. nfe: `(steps, ends_at_zero, resolved options) -> denoiser calls`
    (None: adaptive). evaluated: `(grid as a list, resolved options) -> the sigmas it evaluates, in
    order`, for a sampler that evaluates grid points only (None: a dry run of `run` finds them, as
    for the midpoints of dpm_2 and AMED).
    stochastic: it takes `generator` (the noise of `ddim` with eta > 0). timed: it takes `time`, the
    model's `spaces.StepTime` (its result depends on the variable it steps in)."""

    run: Callable
    options: Mapping[str, object] = field(default_factory=dict)
    nfe: Callable[[int, bool, Mapping], int | None] = one_per_step
    evaluated: Callable[[list, Mapping], list] | None = None
    adaptive: bool = False
    stochastic: bool = False
    timed: bool = False


SOLVERS: dict[str, Solver] = {
    "ddim": Solver(ddim, {"eta": 0.0, "afs": False}, evaluated=at_step_starts, stochastic=True),
    # Euler's x + h d is DDIM's eta = 0 step, D + sigma_next eps
    "euler": Solver(partial(ddim, eta=0.0), {"afs": False}, evaluated=at_step_starts),
    "heun": Solver(heun, {"afs": False}, nfe=two_per_step, evaluated=at_both_ends, timed=True),
    "dpmpp_2m": Solver(dpmpp_2m, {"afs": False}, evaluated=at_step_starts),
    "ipndm": Solver(ipndm, {"max_order": 4, "afs": False}, evaluated=at_step_starts, timed=True),
    "dpm_2": Solver(dpm_2, {"afs": False}, nfe=two_per_step, timed=True),  # amed with r = 1/2, c = 1
    # predictor: a tuning.amed_predictor.AMEDPredictor (a module, not a config value: FewstepScheduler refuses it)
    "amed": Solver(amed, {"r": 0.5, "c": 1.0, "afs": False, "predictor": None}, nfe=two_per_step, timed=True),
    "amed_plugin": Solver(amed_plugin, {"base": "ipndm", "r": 0.5, "c": 1.0, "afs": False, "predictor": None},
                          nfe=two_per_step, timed=True),
    # weights: (steps, order) per step, fitted with the grid (tuning.learned_solver); None: DPM-Solver++(2M)'s
    "learned": Solver(learned, {"weights": None, "afs": False}, evaluated=at_step_starts),
    "dopri5": Solver(dopri5, {"rtol": 1e-5, "atol": 1e-5}, nfe=counted_as_it_goes, adaptive=True),
}
SAMPLER_NAMES = tuple(SOLVERS)
FIXED_GRID_NAMES = tuple(name for name, solver in SOLVERS.items() if not solver.adaptive)


def get_solver(name: str) -> Solver:
    """The registry entry of sampler `name`."""
    if name not in SOLVERS:
        raise ValueError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLER_NAMES)}")
    return SOLVERS[name]


def resolve_options(name: str, options: Mapping | None) -> dict:
    """`options` over sampler `name`'s declared defaults; an undeclared one is refused in one line
    naming it and the ones the sampler takes."""
    declared = get_solver(name).options
    unknown = sorted(set(options or {}) - set(declared))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for sampler {name!r}; "
                         f"it takes: {', '.join(declared) or 'none'}")
    return {**declared, **(options or {})}


def check_sigmas(sigmas) -> torch.Tensor:
    """Sigmas as a float64 tensor (differentiably, if they require grad): at least two, finite,
    strictly decreasing, positive but the last (which may be 0)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"need at least one step (two sigmas), got sigmas of shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all():
        raise ValueError(f"sigmas must be finite, got {sigmas.tolist()}")
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(f"sigmas must be strictly decreasing, got {sigmas.tolist()}")
    if sigmas[-1] < 0:
        raise ValueError(f"sigmas must be positive (the last may be 0), got {sigmas.tolist()}")
    return sigmas


def check_start(denoiser, x) -> None:
    """Refuse, in one line naming it, a start `x` that is no floating-point tensor or whose sample shape
    the denoiser cannot take: its `check_shape` (a UNet takes other sizes), else its `sample_shape`."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"the noise must be a floating-point tensor, got "
                        f"{x.dtype if torch.is_tensor(x) else type(x).__name__}")
    shape = getattr(denoiser, "sample_shape", None)
    if shape is None:
        return
    shape, given = tuple(shape), tuple(x.shape)
    if len(given) != len(shape) + 1 or (not hasattr(denoiser, "check_shape") and given[1:] != shape):
        raise ValueError(f"the noise has shape {given}; the model's samples have shape {shape}: give (batch, "
                         f"{', '.join(map(str, shape))})")
    if hasattr(denoiser, "check_shape"):
        try:
            denoiser.check_shape(given[1:])
        except ValueError as err:
            raise ValueError(f"the noise has shape {given}: {err}") from None


def check_cond(cond: Mapping | None, batch: int) -> dict:
    """The conditioning keywords as a dict (none: {}), each a tensor of one row per sample, else refused in
    one line naming the keyword and its rows."""
    cond = dict(cond or {})
    for key, value in cond.items():
        if not torch.is_tensor(value) or value.ndim == 0 or len(value) != batch:
            rows = len(value) if torch.is_tensor(value) and value.ndim else "no"
            raise ValueError(f"the conditioning {key} has {rows} rows; the batch has {batch}: give one row per sample")
    return cond


def nfe(name: str, sigmas, options: Mapping | None = None) -> int | None:
    """The exact number of denoiser calls `sample(name, ..., sigmas, **options)` makes; `None` for
    an adaptive sampler (count its calls with a `callback`)."""
    options = resolve_options(name, options)
    sigmas = check_sigmas(sigmas)
    return SOLVERS[name].nfe(len(sigmas) - 1, bool(sigmas[-1] == 0), options)


def steps_for_nfe(name: str, target: int, options: Mapping | None = None, ends_at_zero: bool = True) -> int:
    """The largest number of steps whose NFE is at most `target`, on a grid ending at 0 or not
    (`final_sigmas_type="sigma_min"`: Heun then pays for its last corrector)."""
    options = resolve_options(name, options)
    if SOLVERS[name].adaptive:
        raise ValueError(f"sampler {name!r} has no fixed grid, so no step count for an NFE budget")
    steps = 0
    while SOLVERS[name].nfe(steps + 1, ends_at_zero, options) <= target:
        steps += 1
    if steps == 0:
        raise ValueError(f"sampler {name!r} needs more than {target} NFE for one step")
    return steps


def step_time(denoiser) -> StepTime:
    """The time `denoiser`'s steps are taken in: its `step_time` (a flow's is `FLOW_TIME`), else sigma."""
    return getattr(denoiser, "step_time", SIGMA_TIME)


def extras(solver: Solver, generator, time: StepTime) -> dict:
    """The keywords a step generator takes beside its options: `generator` if stochastic, `time` if timed."""
    return {**({"generator": generator} if solver.stochastic else {}), **({"time": time} if solver.timed else {})}


def run_steps(steps, denoise: Callable) -> torch.Tensor:
    """Drive a step generator: answer each `(x, sigma)` it yields with `(x, denoise(x, sigma))` (none:
    afs on one step to 0 needs no call)."""
    try:
        request = next(steps)
        while True:
            request = steps.send((request[0], denoise(*request)))
    except StopIteration as done:
        return done.value


def evaluated_sigmas(name: str, sigmas: torch.Tensor, options: Mapping, time: StepTime = SIGMA_TIME) -> list[float]:
    """The sigmas fixed-grid sampler `name` evaluates down the grid `sigmas` with its resolved `options`, in
    order: its entry's `evaluated` rule, else (the grid does not depend on `x`) those of one dry run of its
    step generator on a one-element `x`, with a throwaway generator."""
    solver, points = SOLVERS[name], sigmas.tolist()
    if solver.evaluated is not None:
        return solver.evaluated(points, options)
    asked = []

    def record(x, sigma):
        asked.append(float(sigma))
        return x

    run_steps(solver.run(torch.zeros(1, dtype=torch.float64), sigmas, **options,
                         **extras(solver, torch.Generator(), time)), record)
    return asked


def solve(name: str, denoiser, x: torch.Tensor, sigmas, /, *, generator=None, callback=None,
          cond: Mapping | None = None, **options) -> torch.Tensor:
    """Run sampler `name` from the sigma-space point `x` at `sigmas[0]` down `sigmas`, keeping
    gradients and `x`'s dtype: autograd reaches `x`, tensor `sigmas` that require grad and the
    denoiser's parameters (a distillation teacher, a schedule search). Arguments as `sample`'s (`x` checked
    as its noise, `check_start`). With
    AMED's `predictor`, the denoiser runs watched: its bottleneck is what the predictor reads."""
    solver, options = get_solver(name), resolve_options(name, options)
    sigmas = check_sigmas(sigmas)
    check_start(denoiser, x)
    cond = check_cond(cond, len(x))
    calls = 0

    def denoise(x, sigma):
        nonlocal calls
        denoised = denoiser(x, sigma, **cond)
        calls += 1
        if callback is not None:
            callback({"nfe": calls, "x": x, "sigma": float(torch.as_tensor(sigma).double().mean()),
                      "denoised": denoised})
        return denoised

    with watching(name, options.get("predictor"), denoiser):
        if solver.adaptive:
            return solver.run(denoise, x, sigmas, **options)
        return run_steps(solver.run(x, sigmas, **options, **extras(solver, generator, step_time(denoiser))), denoise)


def sample(name: str, denoiser, noise: torch.Tensor, sigmas, /, *, generator=None, callback=None,
           cond: Mapping | None = None, **options) -> torch.Tensor:
    """Sample with sampler `name` from standard-normal `noise` (scaled here by `sigmas[0]`) down the
    decreasing `sigmas`, without gradients, and return the final `x` in the dtype of `noise`: a
    floating-point, finite tensor (batch, *shape) of a sample shape the model takes (`check_start`).

    denoiser: `(x, sigma) -> D`, `sigma` a 0-d tensor (one per sample, shape (B,), at a learned AMED
    step). generator: a `torch.Generator` or a list of
    one per sample, for the stochastic samplers (`ddim` with `eta > 0`). callback: called after
    every denoiser call with a dict `{"nfe", "x", "sigma", "denoised"}`. cond: the conditioning keywords of
    every denoiser call, one row per sample (`class_labels`, `encoder_hidden_states`; k-diffusion's
    `extra_args`), e.g. for a `guidance.GuidedDenoiser`. options: the sampler's
    declared keywords (`SOLVERS[name].options`, e.g. `eta`, `max_order`, `afs`, `r`, `rtol`, AMED's
    `predictor`). A callback's `sigma` is a number: the mean of a per-sample sigma (a learned AMED step). The
    arithmetic runs in float64 (float32 on MPS); a NaN or inf model output stops it.
    """
    sigmas = check_sigmas(sigmas)
    check_start(denoiser, noise)
    if not torch.isfinite(noise).all():
        raise ValueError(f"the noise has {int((~torch.isfinite(noise)).sum())} NaN or inf values")
    work = torch.float32 if noise.device.type == "mps" else torch.float64

    def check(call):
        if not torch.isfinite(call["denoised"]).all():
            raise FloatingPointError(f"the model output has NaN or inf at sigma={call['sigma']:.6g} "
                                     f"(denoiser call {call['nfe']})")
        if callback is not None:
            callback(call)

    with torch.no_grad():
        x = solve(name, denoiser, noise.to(work) * float(sigmas[0]), sigmas, generator=generator, callback=check,
                  cond=cond, **options)
    return x.to(noise.dtype)


def sample_seeds(name: str, denoiser, seeds, sigmas, shape, batch_size: int = 64, device=None, callback=None,
                 options: Mapping | None = None, cond: Mapping | None = None):
    """Yield batches of samples, sample `i` drawn from its own seed `seeds[i]` (its noise and any
    sampler noise come from `noise.generators`), so the samples depend neither on the batch size nor
    on how the seeds are split over processes or devices. options: the sampler's keywords, as one
    mapping. cond: the conditioning keywords, row `i` for sample `i` (`sample`'s)."""
    options = resolve_options(name, options)
    seeds = list(seeds)
    cond = check_cond(cond, len(seeds))
    for start in range(0, len(seeds), batch_size):
        gens = generators(seeds[start:start + batch_size])
        rows = {key: value[start:start + batch_size] for key, value in cond.items()}
        yield sample(name, denoiser, normal(gens, shape, device), sigmas, generator=gens, callback=callback,
                     cond=rows, **options)
