"""Noise from seeds, drawn one way everywhere: sample `i` from `torch.Generator().manual_seed(seeds[i])`
alone, in float32 on the CPU, then moved. So a sample is the same on any device, in any batch and on
any number of processes (sampling, evaluation, reflow pairs, AMED's noise set, one-step generators)."""
from __future__ import annotations

import torch


def generators(seeds) -> list[torch.Generator]:
    """One CPU generator per seed (a stochastic sampler goes on drawing from it after the noise)."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def normal(gens, shape, device=None) -> torch.Tensor:
    """Standard-normal noise of shape `(len(gens), *shape)`, sample `i` from `gens[i]`."""
    shape = tuple(int(s) for s in shape)
    if not gens:
        return torch.empty(0, *shape, device=device)
    return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)


def seeded_noise(seeds, shape, device=None) -> torch.Tensor:
    """`normal` noise with sample `i` from `seeds[i]`."""
    return normal(generators(seeds), shape, device)
