"""Fitting the learned multistep solver (`samplers.learned`): its per-step weights of the current and past
denoiser outputs and its grid, together, by Adam on the ODE error (the RMS distance of the solver's result
to the dopri5 solution of the same noise, `schedule_search.ode_error`), differentiating through `solve`.

It follows S4S (Frankel et al. 2025, arXiv 2502.17423) in fitting the coefficients and the time steps
together against teacher solutions and in starting from a classic solver (here DPM-Solver++(2M) on the best
lever grid of the schedule search, so the fit can only lower the training error); it differs in its loss,
the endpoint distance in pixel space alone (S4S also matches intermediate points, GAS and LD3 use a
feature distance), and in keeping the fit only if it also beats the start on held-out noises. A solver with
`P` parameters needs at least `P` training noises (`check_noises`), against overfitting the few noises.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..samplers.learned import dpmpp_2m_weights
from . import schedule_tables
from .schedule_search import PRIOR_MARGIN, GridParameters, frozen, lever_grids, ode_error, teachers

NAME = "learned"


@dataclass
class SolverFit:
    """The fitted grid and weights at one NFE, their held-out ODE error against the start's (DPM-Solver++(2M)
    on `start_how`), whether the fit was kept (it beat the start on the held-out noises), and its curve:
    `(iteration, training error, held-out error)` every `every` iterations."""
    nfe: int
    sigmas: torch.Tensor
    weights: torch.Tensor
    held_out_error: float
    start_held_out_error: float
    start_how: str
    kept: bool
    seconds: float
    curve: list = field(default_factory=list)

    def record(self) -> dict:
        """What a table entry stores beside the grid and the weights."""
        return {"held_out_ode_error": self.held_out_error, "kept": self.kept,
                "start": {"how": f"dpmpp_2m on {self.start_how}", "held_out_ode_error": self.start_held_out_error},
                "seconds": round(self.seconds, 1),
                "curve": [{"iteration": i, "ode_error": e, "held_out_ode_error": h} for i, e, h in self.curve]}


class SolverParameters(torch.nn.Module):
    """The grid (`schedule_search.GridParameters`) and the weights (steps, order) as free parameters."""

    def __init__(self, sigmas: torch.Tensor, weights: torch.Tensor, sigma_min: float, sigma_max: float,
                 lowest_top: float):
        super().__init__()
        self.grid = GridParameters(sigmas, sigma_min, sigma_max, lowest_top)
        self.weights = torch.nn.Parameter(weights.clone())

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.grid(), self.weights


def check_teacher(denoiser) -> None:
    """Refuse a model whose dopri5 teacher cannot be computed: no finite `sigma_max` above `sigma_min`."""
    low, high = getattr(denoiser, "sigma_min", None), getattr(denoiser, "sigma_max", None)
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 < low < high < math.inf):
        raise ValueError(f"the teacher (dopri5 from sigma_max to 0) needs the model's sigma range; "
                         f"{type(denoiser).__name__} has sigma_min={low}, sigma_max={high}")


def check_noises(num_noises: int, steps: int, order: int) -> None:
    """Refuse fewer training noises than the solver has parameters (weights and grid points)."""
    parameters = steps * order + steps
    if num_noises < parameters:
        raise ValueError(f"{num_noises} noises are too few to fit the {parameters} parameters of the learned solver "
                         f"({steps} steps of order {order} and the grid): use at least {parameters}")


def start_grid(denoiser, nfe: int, noise, reference, lowest_top: float, starts=()) -> tuple[str, torch.Tensor]:
    """`(how, sigmas)`: the grid among the lever grids (`schedule_search.lever_grids`) and `starts` (more
    `(how, sigmas)`, e.g. the model's searched DPM-Solver++(2M) grid) on which the solver's start,
    DPM-Solver++(2M), has the lowest ODE error on `noise`."""
    grids = [*lever_grids(NAME, nfe, float(denoiser.sigma_min), float(denoiser.sigma_max), lowest_top), *starts]
    errors = [ode_error(NAME, denoiser, noise, reference, sigmas).item() for _, sigmas in grids]
    return grids[min(range(len(grids)), key=errors.__getitem__)]


def fit_solver(denoiser, nfe: int, noise, reference, held_out, held_out_reference, order: int = 3,
               iterations: int = 300, lr: float = 0.01, every: int = 25, progress: bool = True,
               starts=()) -> SolverFit:
    """Fit the learned solver at exactly `nfe` steps: start at DPM-Solver++(2M) (`dpmpp_2m_weights`, zero
    weights beyond its order) on `start_grid` (with the extra `starts`), then Adam (learning rate `lr` for both) on the ODE error of
    `noise`; the iterate with the lowest training error is kept if its held-out error beats the start's.
    `reference`, `held_out_reference`: `schedule_search.ode_reference` of each. A NaN error stops the fit
    with one line naming the iteration."""
    check_teacher(denoiser)
    check_noises(len(noise), nfe, order)
    begin = time.perf_counter()
    lowest_top = min(PRIOR_MARGIN * float(reference.std()), float(denoiser.sigma_max))
    how, sigmas = start_grid(denoiser, nfe, noise, reference, lowest_top, starts)
    params = SolverParameters(sigmas, dpmpp_2m_weights(sigmas, order), float(denoiser.sigma_min),
                              float(denoiser.sigma_max), lowest_top)
    optimizer = torch.optim.Adam(params.parameters(), lr=lr)
    best, best_error, curve = params(), math.inf, []
    with frozen(denoiser), torch.enable_grad():
        for i in tqdm(range(iterations + 1), desc=f"fit learned NFE {nfe}", unit="step", leave=False,
                      disable=not progress):
            grid, weights = params()
            error = ode_error(NAME, denoiser, noise, reference, grid, {"weights": weights}, grad=True)
            if not torch.isfinite(error):
                raise FloatingPointError(f"the learned solver's fit at NFE {nfe} diverged at iteration {i} (ODE error "
                                         f"{error.item()}): lower lr={lr}")
            if error.item() < best_error:
                best, best_error = (grid.detach().clone(), weights.detach().clone()), error.item()
            if i % every == 0 or i == iterations:
                held = ode_error(NAME, denoiser, held_out, held_out_reference, grid, {"weights": weights.detach()})
                curve.append((i, error.item(), held.item()))
            if i < iterations:
                optimizer.zero_grad()
                error.backward()
                optimizer.step()
    start_held = ode_error(NAME, denoiser, held_out, held_out_reference, sigmas).item()
    held = ode_error(NAME, denoiser, held_out, held_out_reference, best[0], {"weights": best[1]}).item()
    return SolverFit(nfe, best[0], best[1], held, start_held, how, held < start_held, time.perf_counter() - begin,
                     curve)


def searched_starts(denoiser, nfes) -> dict:
    """`{nfe: [(how, sigmas)]}`: the model's searched DPM-Solver++(2M) grids (`schedule_tables`; the start's
    sampler) at those of `nfes` it has, as more starts for `run_fits`."""
    path = schedule_tables.default_path(denoiser, "dpmpp_2m")
    entries = schedule_tables.entries(path) if path is not None else {}
    return {nfe: [(f"the searched dpmpp_2m grid ({path})", schedule_tables.lookup(path, denoiser, "dpmpp_2m", {}, nfe))]
            for nfe in nfes if nfe in entries}


def run_fits(denoiser, nfes, order: int = 3, num_noises: int = 256, seed: int = 910000, iterations: int = 300,
             lr: float = 0.01, rtol: float = 1e-5, atol: float = 1e-5, device=None, log=None, progress: bool = True,
             starts=None):
    """`fit_solver` at each NFE of `nfes`, yielding each fit as it is made, on the noises of seeds `seed ..`
    (training) and the `num_noises` after them (held out) with their dopri5 solutions
    (`schedule_search.teachers`); refused before any teacher is computed when the noises are too few or the
    model has no sigma range. starts: `{nfe: [(how, sigmas)]}`, more start grids (`start_grid`)."""
    check_teacher(denoiser)
    for nfe in nfes:
        check_noises(num_noises, int(nfe), order)
    batches = teachers(denoiser, num_noises, seed, rtol, atol, device, log, progress)
    for nfe in sorted(int(n) for n in nfes):
        yield fit_solver(denoiser, nfe, *batches, order=order, iterations=iterations, lr=lr, progress=progress,
                         starts=(starts or {}).get(nfe, ()))
