"""The contracts of the sampling core, as `typing.Protocol`s (docs/conventions.md §1, §4): what a
denoiser, a step generator and AMED's step predictor must offer. `isinstance` checks them at run time
(the method and attribute names; the test suite checks every shipped implementation)."""
from __future__ import annotations

from typing import ContextManager, Generator, Protocol, runtime_checkable

import torch

Request = tuple[torch.Tensor, torch.Tensor]   # (x, sigma): "give me D(x, sigma)"


@runtime_checkable
class Denoiser(Protocol):
    """`D(x, sigma, **cond) -> x0_hat` of `x`'s shape, in sigma space (`x = x0 + sigma eps`); `sigma` a
    number, a 0-d tensor or one per sample. `sigma_min`, `sigma_max`: the range the model was trained
    on; `sample_shape`: (C, H, W) or (D,), None if the model does not know it."""
    sigma_min: float
    sigma_max: float
    sample_shape: tuple | None

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor: ...


@runtime_checkable
class StepGenerator(Protocol):
    """`run(x, sigmas, **options)`: yields `(x, sigma)` for each `D(x, sigma)` it needs, is sent back
    `(x, D)` and returns the final sample (`samplers.steps`)."""

    def __call__(self, x: torch.Tensor, sigmas: torch.Tensor, **options) -> Generator[Request, Request, torch.Tensor]:
        ...


@runtime_checkable
class StepPredictor(Protocol):
    """What AMED's samplers ask of a learned predictor (`tuning.amed_predictor.AMEDPredictor`): refuse
    a grid it was not made for, read the denoiser's features while it runs, give `(r, c)` per sample."""

    def check(self, sampler: str, sigmas: torch.Tensor, afs: bool, base: str | None = None) -> None: ...

    def watch(self, denoiser) -> ContextManager: ...

    def step_ratios(self, x: torch.Tensor, sigma, sigma_next, analytic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ...
