"""Noise from seeds, drawn one way everywhere: sample `i` from `torch.Generator().manual_seed(seeds[i])`
alone, in float32 on the CPU, then moved. So a sample is the same on any device, in any batch and on
any number of processes (sampling, evaluation, reflow pairs, AMED's noise set, one-step generators,
and every random number of training: a row's seed is `(run seed, step, row of the global batch)`)."""
from __future__ import annotations

import numpy as np
import torch


def _seed(seed) -> int:
    """An integer as it is; a tuple of integers mixed into one 64-bit seed by numpy's `SeedSequence`."""
    if isinstance(seed, tuple):
        return int(np.random.SeedSequence([int(s) for s in seed]).generate_state(1, np.uint64)[0])
    return int(seed)


def generators(seeds) -> list[torch.Generator]:
    """One CPU generator per seed, an integer or a tuple of integers (a stochastic sampler goes on
    drawing from it after the noise; a training objective draws a row's noise, then its time)."""
    return [torch.Generator().manual_seed(_seed(s)) for s in seeds]


def _draw(draw, gens, shape, device) -> torch.Tensor:
    """`draw(shape)` from each generator, stacked to shape `(len(gens), *shape)`, moved to `device`."""
    shape = tuple(int(s) for s in shape)
    if not gens:
        return torch.empty(0, *shape, device=device)
    return torch.stack([draw(shape, generator=g) for g in gens]).to(device)


def normal(gens, shape, device=None) -> torch.Tensor:
    """Standard-normal noise of shape `(len(gens), *shape)`, sample `i` from `gens[i]`."""
    return _draw(torch.randn, gens, shape, device)


def uniform(gens, shape, device=None) -> torch.Tensor:
    """`U[0, 1)` of shape `(len(gens), *shape)`, sample `i` from `gens[i]`."""
    return _draw(torch.rand, gens, shape, device)


def seeded_noise(seeds, shape, device=None) -> torch.Tensor:
    """`normal` noise with sample `i` from `seeds[i]`."""
    return normal(generators(seeds), shape, device)
