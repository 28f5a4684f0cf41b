"""What `FewstepScheduler` keeps between two `step()` calls besides the sampler's generator: the
precision of its state, whether the pipeline edited the sample it was handed back, and the random
state of the generator each step draws from (docs/conventions.md §5)."""
from __future__ import annotations

import torch

# The largest sigma at which the sampler's state may be float32 (`FewstepScheduler._work_dtype`): float32
# keeps `x = x_vp sqrt(1 + sigma^2)` to 6e-8 sigma, which the first step's cancellation carries into the
# image (1e-5 of its range at DDPM's sigma_max 157; Stable Diffusion's table reaches 14.6).
FLOAT32_SIGMA_MAX = 100.0


def version(tensor: torch.Tensor) -> int | None:
    """The tensor's in-place version counter (None for an inference-mode tensor, which keeps none)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def fresh_like(generator):
    """A new torch.Generator (or list of them) on the same device(s), for `copy_states`; None for None."""
    if isinstance(generator, (list, tuple)):
        return [torch.Generator(g.device) for g in generator]
    return None if generator is None else torch.Generator(generator.device)


def copy_states(target, source) -> None:
    """Give `target` the random state(s) of `source` (generators or lists of them; nothing if either is None)."""
    if target is None or source is None:
        return
    targets, sources = (g if isinstance(g, (list, tuple)) else [g] for g in (target, source))
    if len(targets) != len(sources) or isinstance(target, (list, tuple)) != isinstance(source, (list, tuple)):
        raise ValueError(f"step() got {len(sources)} generator(s) where the trajectory started with "
                         f"{len(targets)}; pass one per sample, or one for all, at every step")
    for t, s in zip(targets, sources):
        t.set_state(s.get_state())
