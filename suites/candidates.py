"""The candidates of the frontier (`suites.frontier`): every way the toolkit samples a model at a target
NFE, each with where it comes from: a classic sampler on the default grid (`grid`) or on the model's
searched grid (`table`, `tuning.schedule_tables`), AMED and AMED-Plugin with the model's predictors
(`predictor`), the learned solver of the model's table (`learned`, `tuning.solver_tables`), Skip-Tuning at
the model's calibrated factors (`skiptune`), a one-step generator (`generator`, NFE 1)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch

from fewstep import samplers as sampling
from fewstep.evaluation.generators import GeneratorFn, SamplerFn
from fewstep.gan import load_generator
from fewstep.samplers.solvers import resolve_options
from fewstep.suites.sweep import DEFAULT_GRID, FLOW_GRID, SKIPTUNE_SAMPLERS
from fewstep.tuning import amed_predictor, schedule_tables, skiptune_tables, solver_tables

KINDS = ("grid", "table", "predictor", "learned", "skiptune", "generator")
SAMPLERS = ["ddim", "euler", "heun", "dpmpp_2m", "ipndm", "dpm_2"]
GENERATORS = ("digits_rf_1step", "digits_rf_gan")  # one-step generators: candidates at NFE 1 only
AMED = (("amed", None), ("amed_plugin", "ipndm"))  # (sampler, base) of the predictors a model may have


@dataclass
class Candidate:
    """One way to sample `model` at a target NFE: `label` names it within the model, `source` says where it
    comes from (one of KINDS), `nfe` is what it costs, `sample_fn` draws samples of seeds. `key` identifies
    what it samples (the same key, the same samples), so that a grid reused at two targets is scored once."""
    model: str
    label: str
    source: str
    nfe: int
    sample_fn: Callable = field(repr=False)
    sigmas: list | None = None
    detail: str = ""

    @property
    def name(self) -> str:
        """`<model> <label>` (the label alone for a one-step generator, which is its model)."""
        return self.label if self.label == self.model else f"{self.model} {self.label}"

    @property
    def key(self) -> tuple:
        return self.model, self.label, tuple(self.sigmas or ()), self.detail


def load_model(name: str):
    """`(model, grid)`: a one-step generator (GENERATORS; grid None) or a denoiser with its default grid
    (FLOW_GRID for a flow, DEFAULT_GRID otherwise)."""
    if name in GENERATORS:
        return load_generator(name).eval(), None
    denoiser = sampling.from_pretrained(name).eval()
    return denoiser, FLOW_GRID if isinstance(denoiser, sampling.FlowDenoiser) else DEFAULT_GRID


def grid_sigmas(name: str, denoiser, target: int, grid: dict) -> torch.Tensor | None:
    """The grid `grid` (sweep.DEFAULT_GRID keywords) with the most steps of `name` within `target` NFE;
    None when one step costs more."""
    ends_at_zero = grid["final_sigmas_type"] == "zero"
    if sampling.SOLVERS[name].nfe(1, ends_at_zero, resolve_options(name, {})) > target:
        return None
    steps = sampling.steps_for_nfe(name, target, ends_at_zero=ends_at_zero)
    return sampling.get_sigmas(grid["kind"], steps, grid["sigma_min"] or denoiser.sigma_min,
                               grid["sigma_max"] or denoiser.sigma_max, rho=grid["rho"],
                               final_sigmas_type=grid["final_sigmas_type"])


def searched(name: str, denoiser, target: int) -> torch.Tensor | None:
    """The model's searched grid of `name` within `target` NFE, as `schedule.kind=auto` takes it; None
    without a table or an entry within the budget."""
    path = schedule_tables.default_path(denoiser, name)
    found = schedule_tables.best_within(path, denoiser, name, {}, target) if path is not None and path.is_file() \
        else None
    return None if found is None else found[1]


def sampler_candidate(model: str, label: str, source: str, name: str, denoiser, sigmas, options=None,
                      wrap=None, detail: str = "") -> Candidate:
    """A Candidate of sampler `name` on `sigmas` with `options`; `wrap()`: a context each batch runs in."""
    fn = SamplerFn(name, denoiser, sigmas, denoiser.sample_shape, options=options)

    def sample_fn(seeds):
        if wrap is None:
            return fn(seeds)
        with wrap():
            return fn(seeds)

    return Candidate(model, label, source, sampling.nfe(name, sigmas, options), sample_fn,
                     [float(s) for s in sigmas], detail)


def predictor_candidates(model: str, denoiser, target: int) -> list[Candidate]:
    """AMED and AMED-Plugin with the model's own predictor of exactly `target` NFE, on its grid."""
    found = []
    for name, base in AMED:
        path = amed_predictor.shipped(denoiser, name, base).get(target)
        if path is not None:
            table = json.loads((path / "frozen_table.json").read_text())
            options = {**table["sampler_options"], "r": 0.5, "c": 1.0,
                       "predictor": amed_predictor.load(path, name, base, target)}
            found.append(sampler_candidate(model, f"{name} predictor", "predictor", name, denoiser,
                                           torch.tensor(table["sigmas"], dtype=torch.float64), options))
    return found


def learned_candidates(model: str, denoiser, target: int) -> list[Candidate]:
    """The learned solver of the model's table at exactly `target` NFE (none without one)."""
    path = solver_tables.default_path(denoiser)
    if path is None or target not in solver_tables.nfes(path):
        return []
    sigmas, weights = solver_tables.lookup(path, denoiser, target)
    return [sampler_candidate(model, "learned", "learned", "learned", denoiser, sigmas, {"weights": weights})]


def skiptune_candidates(model: str, denoiser, target: int, names, grid: dict) -> list[Candidate]:
    """Skip-Tuning of each sampler at the factors calibrated for the model at exactly `target` NFE, on the
    grid they were calibrated on (`schedule.kind=auto`: the searched grid, else the default)."""
    found = []
    for name in (n for n in SKIPTUNE_SAMPLERS if n in names):
        path = skiptune_tables.default_path(denoiser, name)
        if path is None or not path.is_file() or str(target) not in skiptune_tables.load(path)["by_nfe"]:
            continue
        top, bottom, _ = skiptune_tables.factors(denoiser, name, target)
        sigmas = searched(name, denoiser, target)
        sigmas = grid_sigmas(name, denoiser, target, grid) if sigmas is None else sigmas
        found.append(sampler_candidate(model, f"{name}+skiptune", "skiptune", name, denoiser, sigmas,
                                       wrap=partial(sampling.skip_tuning, denoiser, top, bottom),
                                       detail=f"rho_top {top:g}, rho_bottom {bottom:g}"))
    return found


def candidates(model: str, loaded, target: int, names=SAMPLERS, kinds=KINDS) -> list[Candidate]:
    """Every candidate of `model` (`loaded`: `load_model`'s pair) at `target` NFE among `kinds`."""
    net, grid = loaded
    if grid is None:  # a one-step generator
        return [Candidate(model, model, "generator", 1, GeneratorFn(net))] if target == 1 and "generator" in kinds \
            else []
    found = []
    for name in names:
        for source, sigmas in (("grid", grid_sigmas(name, net, target, grid) if "grid" in kinds else None),
                               ("table", searched(name, net, target) if "table" in kinds else None)):
            if sigmas is not None:
                label = f"{name} {'searched' if source == 'table' else grid['kind']}"
                found.append(sampler_candidate(model, label, source, name, net, sigmas))
    found += predictor_candidates(model, net, target) if "predictor" in kinds else []
    found += learned_candidates(model, net, target) if "learned" in kinds else []
    return found + (skiptune_candidates(model, net, target, names, grid) if "skiptune" in kinds else [])
