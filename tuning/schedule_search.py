"""Schedule search: the sigma grid of a sampler at an exact NFE, chosen by measurement.

The objective is the ODE error: the root-mean-square distance between the sampler's result and the
`dopri5` solution of the same noise (from the model's `sigma_max` to 0), averaged over a batch of
noises. No feature extractor, so a search costs minutes on a CPU.

1. **Levers** (`lever_grids`): every grid `get_sigmas` makes from a kind (Karras with several rho,
   log-SNR, VP-time-uniform), a `sigma_max` at or below the model's but at least `PRIOR_MARGIN`
   times the data's standard deviation (measured on the references: the start `sigma_max * noise`
   must stand for the noised data, whose variance is `sigma_max^2 + std^2`), and an ending (a step to 0
   from sigma_min or from a larger last sigma, or the sample returned at sigma_min), kept when its
   NFE is exactly the one asked; so is the grid found at a lower NFE with a point inserted, when
   that costs the NFE. The best of them by ODE error is the start.
2. **Refinement** (as Align Your Steps, Sabour et al. 2024, optimises each time point of a grid,
   here for the ODE error): the grid's positive sigmas, parametrised so that they stay strictly
   decreasing within that range, move by Adam on the ODE error of a training batch,
   differentiating through the sampler (`solvers.solve`); the refined grid is kept only if it
   also beats the start on a second, held-out batch.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..samplers.noise import seeded_noise
from ..samplers.schedules import RHO, get_sigmas
from ..samplers.solvers import nfe as nfe_of, sample, solve, steps_for_nfe

PRIOR_MARGIN = 10.0
KINDS = (("karras", 2.0), ("karras", 4.0), ("karras", RHO), ("logsnr", None), ("time_uniform", None))

_log = logging.getLogger(__name__)


@dataclass
class Grid:
    """A candidate grid and its ODE error; `how` says where it came from."""
    sigmas: torch.Tensor
    error: float
    how: str


@dataclass
class SearchResult:
    """The chosen grid at one NFE, the best lever grid it started from, today's default grid (Karras
    rho 7 over the model's range, ending with a step to 0) when the sampler reaches the NFE on it,
    and the search's cost. `curve`: every grid tried, as `(how, error)`."""
    nfe: int
    best: Grid
    start: Grid
    default: Grid | None
    seconds: float
    curve: list = field(default_factory=list)

    def record(self, curve: bool = True) -> dict:
        """The result as JSON values: what a table entry stores beside the grid (and the curve)."""
        record = {"how": self.best.how, "held_out_ode_error": self.best.error,
                  "start": {"how": self.start.how, "held_out_ode_error": self.start.error},
                  "default_held_out_ode_error": None if self.default is None else self.default.error,
                  "seconds": round(self.seconds, 1)}
        return {**record, "curve": [{"how": how, "ode_error": e} for how, e in self.curve]} if curve else record


def ode_reference(denoiser, noise: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5,
                  progress: bool = False, cond=None, calls: list | None = None) -> torch.Tensor:
    """The dopri5 solution of `noise` from the denoiser's `sigma_max` to 0, float64; `progress`: a bar
    of its network calls on stderr; `cond`: the conditioning keywords, one row per noise; `calls`: a list
    the number of network calls (NFE) is appended to."""
    grid = torch.tensor([denoiser.sigma_max, denoiser.sigma_min, 0.0], dtype=torch.float64)
    count = [0]

    def called(call):
        count[0] += 1
        bar.update(1)

    with tqdm(desc="dopri5 reference", unit="NFE", leave=False, disable=not progress) as bar:
        x = sample("dopri5", denoiser, noise.double(), grid, rtol=rtol, atol=atol,  # (it refuses NaN or inf)
                   callback=called, cond=cond)
    if calls is not None:
        calls.append(count[0])
    return x


def teachers(denoiser, num_noises: int, seed: int, rtol: float = 1e-5, atol: float = 1e-5, device=None, log=None,
             progress: bool = True, cond=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(noise, reference, held_out, held_out_reference)`: the noises of seeds `seed ..` (training) and
    the `num_noises` after them (held out), of the denoiser's sample shape, and their dopri5 solutions
    (`ode_reference`, row `i` of both batches conditioned by row `i` of `cond`); `log` says what they cost."""
    log = log or _log.info
    shape = tuple(denoiser.sample_shape)
    noise = seeded_noise(range(seed, seed + num_noises), shape, device)
    held_out = seeded_noise(range(seed + num_noises, seed + 2 * num_noises), shape, device)
    begin = time.perf_counter()
    log(f"dopri5 references of {2 * num_noises} noises (rtol {rtol:g}, atol {atol:g})")
    calls = []
    reference = ode_reference(denoiser, noise, rtol, atol, progress, cond=cond, calls=calls)
    held_out_reference = ode_reference(denoiser, held_out, rtol, atol, progress, cond=cond, calls=calls)
    log(f"dopri5 references of {2 * num_noises} noises: {time.perf_counter() - begin:.0f} s, NFE "
        f"{calls[0]} + {calls[1]} (batches of {num_noises})")
    return noise, reference, held_out, held_out_reference


def ode_error(name: str, denoiser, noise: torch.Tensor, reference: torch.Tensor, sigmas, options=None,
              grad: bool = False, cond=None) -> torch.Tensor:
    """RMS distance between sampler `name` on `sigmas` from `noise` (conditioned by `cond`) and `reference`,
    per value."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        x = solve(name, denoiser, noise.double() * sigmas[0], sigmas, cond=cond, **(options or {}))
    return (x - reference).pow(2).mean().sqrt()


def lever_grids(name: str, nfe: int, sigma_min: float, sigma_max: float, lowest_top: float = 0.0, options=None):
    """`(how, sigmas)` for every lever combination whose grid costs sampler `name` exactly `nfe`,
    starting at the model's `sigma_max` or a round value in `[lowest_top, sigma_max)`."""
    rounder = (s for s in (80.0, 40.0, 20.0, 10.0, 5.0) if max(sigma_min, lowest_top) <= s < sigma_max)
    tops = sorted({sigma_max, *rounder}, reverse=True)
    endings = [("sigma_min", sigma_min)] + [("zero", lo) for lo in (sigma_min, 0.1, 0.3) if lo >= sigma_min]
    for kind, rho in KINDS:
        for top in tops:
            for final, lo in endings:
                if lo >= top or (kind == "time_uniform" and lo != sigma_min):  # its VP fit needs the model's
                    continue
                for steps in range(1, nfe + 2):  # afs: a grid of nfe + 1 steps costs nfe
                    sigmas = get_sigmas(kind, steps, sigma_min=lo, sigma_max=top, rho=rho or RHO,
                                        final_sigmas_type=final)
                    if nfe_of(name, sigmas, options) == nfe:
                        how = (f"{kind}{f' rho {rho:g}' if rho else ''}, sigma_max {top:g}, "
                               + (f"ends at sigma_min {lo:g}" if final == "sigma_min" else f"step to 0 from {lo:g}"))
                        yield how, sigmas
                        break


def with_point_inserted(sigmas: torch.Tensor) -> torch.Tensor:
    """`sigmas` with the geometric mean of its widest gap in log sigma (between positive sigmas)
    inserted: a grid searched at a lower NFE as a start for the next one."""
    positive = sigmas[sigmas > 0]
    if len(positive) < 2:
        return sigmas
    i = int((positive[:-1] / positive[1:]).argmax())
    middle = (positive[i] * positive[i + 1]).sqrt()
    return torch.cat([sigmas[:i + 1], middle[None], sigmas[i + 1:]])


class GridParameters(torch.nn.Module):
    """A grid's positive sigmas `s_0 > ... > s_K` as free parameters that keep them strictly
    decreasing within `[sigma_min, sigma_max]`, `s_0 >= lowest_top`:
    `log s_0 = log lowest_top + sigmoid(a) (log sigma_max - log lowest_top)`, the last
    either fixed at sigma_min (a grid ending there) or `log sigma_min + sigmoid(b) (log s_0 - log sigma_min)`,
    and the gaps between them in log sigma a softmax of `v` times the span."""

    def __init__(self, sigmas: torch.Tensor, sigma_min: float, sigma_max: float, lowest_top: float):
        super().__init__()
        self.ends_at_zero = bool(sigmas[-1] == 0)
        positive = sigmas[:-1] if self.ends_at_zero else sigmas
        self.log_min, self.log_max = math.log(sigma_min), math.log(sigma_max)
        self.log_floor = math.log(max(lowest_top, sigma_min)) - 1e-3  # (a start at lowest_top stays inside)
        log_s = positive.log()
        top = ((log_s[0] - self.log_floor) / (self.log_max - self.log_floor)).clamp(1e-12, 1 - 1e-12)
        self.a = torch.nn.Parameter(torch.logit(top))
        fraction = ((log_s[-1] - self.log_min) / (log_s[0] - self.log_min)).clamp(1e-12, 1 - 1e-12)
        self.b = torch.nn.Parameter(torch.logit(fraction))
        self.v = torch.nn.Parameter((-log_s.diff()).clamp(min=1e-6).log())

    def forward(self) -> torch.Tensor:
        top = self.log_floor + torch.sigmoid(self.a) * (self.log_max - self.log_floor)
        bottom = self.log_min + torch.sigmoid(self.b) * (top - self.log_min) if self.ends_at_zero \
            else top.new_tensor(self.log_min)
        steps = torch.softmax(self.v, 0).cumsum(0) * (top - bottom)
        log_s = torch.cat([top[None], top - steps[:-1], bottom[None]])
        sigmas = log_s.exp()
        return torch.cat([sigmas, sigmas.new_zeros(1)]) if self.ends_at_zero else sigmas


@contextmanager
def frozen(module):
    """The module's parameters without gradients inside the block (the grid alone is trained)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def refine(name: str, denoiser, start: torch.Tensor, noise, reference, options=None, iterations: int = 30,
           lr: float = 0.05, lowest_top: float = 0.0, progress: bool = False, cond=None) -> tuple[torch.Tensor, float]:
    """Adam on the grid's positive sigmas (`GridParameters`) against the ODE error of `noise`;
    the grid with the lowest training error seen, and that error. `progress`: a bar of the steps on stderr."""
    params = GridParameters(start, denoiser.sigma_min, denoiser.sigma_max, lowest_top)
    optimizer = torch.optim.Adam(params.parameters(), lr=lr)
    best, best_error = start, math.inf
    bar = tqdm(range(iterations), desc=f"refine {name}", unit="step", leave=False, disable=not progress)
    with frozen(denoiser), torch.enable_grad():
        for _ in bar:
            sigmas = params()
            error = ode_error(name, denoiser, noise, reference, sigmas, options, grad=True, cond=cond)
            if not torch.isfinite(error):
                raise FloatingPointError(f"the schedule search produced a NaN error on the grid {sigmas.tolist()}")
            if error.item() < best_error:
                best, best_error = sigmas.detach().clone(), error.item()
            bar.set_postfix(ode_error=f"{error.item():.5f}", refresh=False)
            optimizer.zero_grad()
            error.backward()
            optimizer.step()
    return best, best_error


def search(name: str, denoiser, nfe: int, noise: torch.Tensor, reference: torch.Tensor, held_out: torch.Tensor,
           held_out_reference: torch.Tensor, options=None, iterations: int = 30, lr: float = 0.05,
           log=None, warm: dict | None = None, progress: bool = True, cond=None) -> SearchResult:
    """The grid of sampler `name` at exactly `nfe` denoiser calls with the lowest ODE error: the
    best start (a lever grid, `lever_grids`, or a grid `warm` maps a lower NFE to, with a point
    inserted, `with_point_inserted`, when that costs exactly `nfe`; measured on `noise`), refined
    (`refine`, on `noise`) when the refinement also wins on `held_out`. `reference`,
    `held_out_reference`: `ode_reference` of each. `log`: where each step's line goes (this module's
    logger); `progress`: a bar of the refinement on stderr; `cond`: the conditioning keywords of both
    batches of noises (one row per noise: row `i` of each batch conditioned alike)."""
    log = log or _log.info
    begin = time.perf_counter()
    sigma_min, sigma_max = float(denoiser.sigma_min), float(denoiser.sigma_max)
    curve, lowest_top = [], min(PRIOR_MARGIN * float(reference.std()), sigma_max)
    starts = list(lever_grids(name, nfe, sigma_min, sigma_max, lowest_top, options))
    for lower, grid in sorted((warm or {}).items()):
        grid = with_point_inserted(grid)
        if nfe_of(name, grid, options) == nfe:
            starts.append((f"the NFE {lower} grid with a point inserted", grid))
    for how, sigmas in starts:
        error = ode_error(name, denoiser, noise, reference, sigmas, options, cond=cond).item()
        if not math.isfinite(error):
            raise FloatingPointError(f"the schedule search produced a NaN error for {name} at NFE {nfe} on {how}")
        curve.append(Grid(sigmas, error, how))
        log(f"{name} NFE {nfe}: {how}: ODE error {error:.5f}")
    if not curve:
        raise ValueError(f"sampler {name!r} reaches NFE {nfe} on none of the lever grids")
    start = min(curve, key=lambda g: g.error)
    log(f"{name} NFE {nfe}: refining {start.how} ({iterations} Adam steps)")
    refined, train_error = refine(name, denoiser, start.sigmas, noise, reference, options, iterations, lr, lowest_top,
                                  progress, cond=cond)
    start_held = ode_error(name, denoiser, held_out, held_out_reference, start.sigmas, options, cond=cond).item()
    refined_held = ode_error(name, denoiser, held_out, held_out_reference, refined, options, cond=cond).item()
    log(f"{name} NFE {nfe}: refined {start.error:.5f} -> {train_error:.5f} (held-out {start_held:.5f} -> "
        f"{refined_held:.5f})")
    best = Grid(refined, refined_held, f"refined from {start.how}") if refined_held < start_held \
        else Grid(start.sigmas, start_held, start.how)
    default = get_sigmas("karras", steps_for_nfe(name, nfe, options), sigma_min, sigma_max)  # today's default grid
    default = Grid(default, ode_error(name, denoiser, held_out, held_out_reference, default, options,
                                      cond=cond).item(),
                   "karras rho 7 over the model's range, step to 0") if nfe_of(name, default, options) == nfe else None
    return SearchResult(nfe, best, Grid(start.sigmas, start_held, start.how), default,
                        time.perf_counter() - begin, [(g.how, g.error) for g in curve])


def run_search(name: str, denoiser, nfes, options=None, num_noises: int = 64, seed: int = 900000,
               iterations: int = 30, lr: float = 0.05, rtol: float = 1e-5, atol: float = 1e-5, device=None,
               log=None, progress: bool = True, cond=None):
    """`search` at each NFE of `nfes` (in increasing order, each warm-started from the ones before),
    yielding each result as it is found: noises from seeds
    `seed ..` (training) and the `num_noises` after them (held out), and their dopri5 references.
    `log`, `progress`: as `search`'s, and a bar of the references' network calls. cond: the conditioning
    keywords of a conditional model, `num_noises` rows: row `i` for noise `i` of each batch (as sample `i` of a run)."""
    if num_noises < 1 or iterations < 0:
        raise ValueError(f"num_noises must be at least 1 and iterations at least 0, got {num_noises} and {iterations}")
    cond = {key: value.to(device) for key, value in (cond or {}).items()}
    noise, reference, held_out, held_out_reference = teachers(denoiser, num_noises, seed, rtol, atol, device, log,
                                                              progress, cond)
    found = {}
    for target in sorted(int(n) for n in nfes):
        result = search(name, denoiser, target, noise, reference, held_out, held_out_reference, options,
                        iterations, lr, log, warm=found, progress=progress, cond=cond)
        found[target] = result.best.sigmas
        yield result
